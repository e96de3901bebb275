"""Content-addressed blob store on local disk: a file's name is the sha256 of its bytes."""

import hashlib
import os
import tempfile
from pathlib import Path


class BlobNotFound(KeyError):
    pass


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes) -> str:
        """Store bytes and return their sha256; writing the same bytes twice is a no-op."""
        digest = hashlib.sha256(data).hexdigest()
        if not self.path(digest).exists():
            self.put_as(digest, data)
        return digest

    def put_as(self, digest: str, data: bytes) -> None:
        """Store bytes under a digest of how they were made (a derived image), replacing any file
        there. Each writer writes its own temporary file beside the target and renames it: readers
        never see a partial file, concurrent writers of the same name never mix their bytes, and a
        crash leaves only a temporary file behind."""
        target = self.path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, sha256: str) -> bytes:
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError:
            raise BlobNotFound(sha256) from None

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()
