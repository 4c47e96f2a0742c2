# SPDX-License-Identifier: MIT
"""ctypes binding of libkvtier, the client library of the kvtier KV-cache store.

The binding is thin on purpose: each method is one call of ``client/kvtier.h``, and block data
moves between numpy arrays and the daemon's shared-memory arena with exactly one copy (put:
your array -> arena; get: arena -> your array) or none (:meth:`Client.reserve` hands you a
writable numpy view of the arena, :meth:`Client.lease` a read-only one).

    import numpy as np, kvtier
    with kvtier.Client() as c:
        lay = c.register_layout(n_layers=32, n_kv_heads=8, head_dim=128, block_tokens=16)
        keys = kvtier.key_chain(lay, token_ids)
        n = c.lookup(lay, keys)                 # cached prefix, in blocks
        c.put(lay, keys[n], block)              # block: any C-contiguous array of block_bytes
        out = c.get(lay, keys[0], dtype=np.float16, shape=lay.block_shape)

The library is found through ``$KVTIER_LIB``, else ``build/client/libkvtier.so`` of the source
checkout this package sits in, else the dynamic loader (``libkvtier.so.0`` as installed, found
through ld.so's cache or ``LD_LIBRARY_PATH``), else ``ctypes.util.find_library('kvtier')``.

Errors are raised as :class:`KvtError` (an :class:`OSError`; ``errno`` is set for errno
codes, ``code`` always holds the positive code).  A miss is not an error for :meth:`Client.get`
(it returns ``None``); it is for :meth:`Client.lease`, :meth:`Client.pin` (``ENOENT``).
"""

# The package's modules (every public name is re-exported here, as it was defined here before):
#   _clib    libkvtier through ctypes: constants and struct mirrors of kvtier.h, the library search
#   _errors  KvtError, strerror(), version()
#   _keys    Layout, key_chain() and numpy views of arena memory
#   client   Client, Reservation, Lease, iter_blocks()
#   kvd      save_kvd()
#   device   the device API: Device, DevPages, dev_available()
#   hf       Hugging Face transformers prefix cache (imported on demand: ``import kvtier.hf``)

from __future__ import annotations

from ._clib import (CONNECT_CHECK_UID, DTYPES, KEY_DTYPE, KV_ORDERS, KVT_ECORRUPT, KVT_EDAEMON,
                    KVT_ELIMIT, KVT_ENOLAYOUT, KVT_EPROTOCOL, KVT_ERRNO_BASE, KVT_EVERSION,
                    KeyLike, _find_library, _lib)
from ._errors import KvtError, strerror, version
from ._keys import Layout, key_chain, layout_block_bytes, layout_fingerprint
from .client import Client, LayoutLike, Lease, Reservation, iter_blocks
from .device import DEV_HOST_ONLY, Device, DevPages, dev_available
from .kvd import save_kvd

__all__ = [
    "KvtError", "Client", "Layout", "Reservation", "Lease", "key_chain", "layout_fingerprint",
    "layout_block_bytes", "strerror", "version", "KEY_DTYPE", "KVT_ERRNO_BASE", "KVT_EVERSION",
    "KVT_ECORRUPT", "KVT_ENOLAYOUT", "KVT_EDAEMON", "KVT_EPROTOCOL", "KVT_ELIMIT",
    "CONNECT_CHECK_UID",
]
__all__ += ["Device", "DevPages", "dev_available", "DEV_HOST_ONLY"]
