/* SPDX-License-Identifier: MIT */
/*
 * kvt_check.h - object checks of the debug layer (house style 5, Varnish's CHECK_OBJ).
 *
 * A long-lived object (a client handle, a device handle, a codec chain) starts with a
 * uint32_t magic, set when it is made and cleared when it is freed.  KVT_CHECK_MAGIC(p, M)
 * at the entry of a function that takes one catches a handle that is not one of ours: a
 * closed one, a stray pointer, memory overwritten.  It aborts with a message naming the
 * object, the magic found and where, since going on would act on memory that is not what it
 * seems.  NULL passes: the functions answer a NULL handle themselves (-EINVAL, a no-op).
 *
 * Active when NDEBUG is not defined (Debug builds) or with KVT_DEBUG (cmake -DKVT_DEBUG=ON;
 * on by default in the sanitizer build); otherwise it compiles to nothing and the functions'
 * own checks answer a bad handle with -EINVAL as before.
 */
#ifndef KVT_CHECK_H
#define KVT_CHECK_H

#include <stdint.h>

#if !defined(NDEBUG) || defined(KVT_DEBUG)
#include <stdio.h>
#include <stdlib.h>

#define KVT_CHECKS 1

__attribute__((noreturn, cold)) static inline void kvt_check_fail(const char *what, uint32_t got,
								  uint32_t want, const char *file,
								  int line, const char *func)
{
	fprintf(stderr, "kvtier: %s:%d: %s: %s is not a live object (magic 0x%08x, not 0x%08x)\n",
		file, line, func, what, (unsigned)got, (unsigned)want);
	abort();
}

#define KVT_CHECK_MAGIC(p, m)                                                                      \
	do {                                                                                       \
		if ((p) && (p)->magic != (m))                                                      \
			kvt_check_fail(#p, (p)->magic, (m), __FILE__, __LINE__, __func__);         \
	} while (0)
#else
#define KVT_CHECKS	      0
#define KVT_CHECK_MAGIC(p, m) ((void)0)
#endif

#endif /* KVT_CHECK_H */
