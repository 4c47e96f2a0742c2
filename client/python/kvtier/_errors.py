# SPDX-License-Identifier: MIT
"""kvtier errors: KvtError, strerror(), version() (part of the kvtier package)."""

from __future__ import annotations

import errno as _errno

from ._clib import (KVT_ECORRUPT, KVT_EDAEMON, KVT_ELIMIT, KVT_ENOLAYOUT, KVT_EPROTOCOL,
                    KVT_ERRNO_BASE, KVT_EVERSION, _lib)

# ---------------------------------------------------------------------------------------------
# Errors

def strerror(code: int) -> str:
    """Message of a kvtier or errno code (sign ignored), from kvt_strerror()."""
    return _lib.kvt_strerror(int(code)).decode("utf-8", "replace")


class KvtError(OSError):
    """A libkvtier call failed.

    ``code`` is the positive error code; ``errno`` equals it for system errno codes
    (``ENOENT``, ``ENOBUFS``, ...) and is ``None`` for kvtier's own codes (``KVT_E*``,
    ``>= KVT_ERRNO_BASE``).  ``strerror`` is kvt_strerror()'s message.
    """

    code: int
    op: str

    def __init__(self, code: int, op: str = "") -> None:
        code = abs(int(code))
        msg = strerror(code)
        if code < KVT_ERRNO_BASE:
            super().__init__(code, msg)
        else:
            super().__init__(msg)
            self.strerror = msg
        self.code = code
        self.op = op

    def __str__(self) -> str:
        where = f"{self.op}: " if self.op else ""
        name = _errno.errorcode.get(self.code) or _KVT_NAMES.get(self.code, str(self.code))
        return f"{where}{self.strerror} ({name})"


_KVT_NAMES = {KVT_EVERSION: "KVT_EVERSION", KVT_ECORRUPT: "KVT_ECORRUPT",
              KVT_ENOLAYOUT: "KVT_ENOLAYOUT", KVT_EDAEMON: "KVT_EDAEMON",
              KVT_EPROTOCOL: "KVT_EPROTOCOL", KVT_ELIMIT: "KVT_ELIMIT"}


def _check(ret: int, op: str) -> int:
    if ret < 0:
        raise KvtError(-ret, op)
    return ret


def version() -> str:
    """Version string of the loaded libkvtier, e.g. ``"0.1.0"``."""
    return _lib.kvt_version().decode()
