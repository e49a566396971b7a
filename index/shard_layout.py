"""Where a sharded catalogue keeps its shards, and which shard holds a reference id.

A sharded catalogue is a directory with a manifest, ``shards.json``, naming its shard
catalogues (ordinary catalogue directories under it) in shard order::

    {"kind": "tunetrace-shards", "format": 1, "generation": 2, "params": {...},
     "shards": ["g2/shard-000", "g2/shard-001", "g2/shard-002"]}

``params`` are the fingerprint parameters every shard was made with (a matcher needs them
before it reaches any shard).

A reference id belongs to shard ``blake2b-64(id) mod N``: stable across processes, machines
and Python versions (unlike ``hash()``). Resharding writes a new generation of shard
directories beside the old one and then replaces the manifest atomically (temporary file,
fsync, rename, fsync of the directory): a reader sees the old shards or the new ones, never a
mixture, and a crash before the rename leaves the old catalogue whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tunetrace.fingerprint.params import FingerprintParams

from tunetrace.errors import CatalogueError

MANIFEST_NAME = "shards.json"
MANIFEST_KIND = "tunetrace-shards"
MANIFEST_FORMAT = 1
#: Most shards a catalogue may have (the global reference keys keep 10 bits for the shard).
MAX_SHARDS = 1024
#: Bits of a global reference key that name the shard, then the generation modulo 1024 (see
#: :func:`global_key`).
SHARD_BITS = 10
GENERATION_BITS = 10
#: Generations a key tells apart.
GENERATION_MODULUS = 1 << GENERATION_BITS


@dataclass(frozen=True)
class ShardManifest:
    """The shards of a sharded catalogue, in shard order.

    Attributes
    ----------
    generation : int
        Bumped by every reshard; the shard directories of generation ``g`` live under
        ``g{g}/``.
    shards : tuple of str
        Shard directories relative to the sharded catalogue's directory.
    params : FingerprintParams
        The fingerprint parameters of every shard.
    converted : bool
        Whether the directory held an unsharded catalogue whose references were moved into
        the shards (its files, if a kill left them, may then be deleted).
    """

    generation: int
    shards: tuple[str, ...]
    params: FingerprintParams
    converted: bool = False

    @property
    def count(self) -> int:
        """Number of shards."""
        return len(self.shards)

    def shard_dirs(self, directory: Path) -> list[Path]:
        """Absolute shard directories under ``directory``."""
        return [directory / shard for shard in self.shards]

    def to_dict(self) -> dict[str, object]:
        """The manifest file's JSON form."""
        return {
            "kind": MANIFEST_KIND,
            "format": MANIFEST_FORMAT,
            "generation": self.generation,
            "params": self.params.to_dict(),
            "converted": self.converted,
            "shards": list(self.shards),
        }


#: File marking a folder as a generation of shards (only such folders are ever deleted).
GENERATION_MARK = ".tunetrace-shards"


def generation_dir_name(generation: int) -> str:
    """Directory holding generation ``generation``'s shards."""
    return f"g{generation}"


def shard_owner(directory: str | Path) -> Path | None:
    """The sharded catalogue whose shard ``directory`` is (``DIR/gN/shard-NNN``), if any."""
    directory = Path(directory).resolve()
    folder = directory.parent
    if (folder / GENERATION_MARK).is_file() and is_sharded(folder.parent):
        return folder.parent
    return None


def new_manifest(
    generation: int, shards: int, params: FingerprintParams, *, converted: bool = False
) -> ShardManifest:
    """The manifest of ``shards`` new shard directories of ``generation``."""
    if not 1 <= shards <= MAX_SHARDS:
        raise CatalogueError(f"a sharded catalogue has 1-{MAX_SHARDS} shards, not {shards}")
    folder = generation_dir_name(generation)
    return ShardManifest(
        generation, tuple(f"{folder}/shard-{i:03d}" for i in range(shards)), params, converted
    )


def is_sharded(directory: str | Path) -> bool:
    """Whether ``directory`` is a sharded catalogue (holds a shard manifest)."""
    return (Path(directory) / MANIFEST_NAME).is_file()


def read_manifest(directory: str | Path) -> ShardManifest:
    """Read and check ``directory``'s shard manifest.

    Raises
    ------
    CatalogueError
        If it is missing, unreadable or not a manifest this version understands.
    """
    path = Path(directory) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CatalogueError(
            f"{directory} is not a sharded catalogue (no {MANIFEST_NAME})"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CatalogueError(f"cannot read the shard manifest {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("kind") != MANIFEST_KIND:
        raise CatalogueError(f"{path} is not a tunetrace shard manifest")
    if data.get("format") != MANIFEST_FORMAT:
        raise CatalogueError(
            f"{path} has shard manifest format {data.get('format')!r}; this tunetrace reads "
            f"format {MANIFEST_FORMAT} (upgrade tunetrace)"
        )
    shards, generation = data.get("shards"), data.get("generation")
    if (
        not isinstance(generation, int)
        or isinstance(generation, bool)
        or generation < 1
        or not isinstance(shards, list)
        or not 1 <= len(shards) <= MAX_SHARDS
        or not all(isinstance(s, str) and _is_inside(s) for s in shards)
        or len({os.path.normpath(s) for s in shards}) != len(shards)
        or any(os.path.normpath(s) != s for s in shards)
    ):
        raise CatalogueError(f"{path} is damaged: its generation or shard list is invalid")
    try:
        params = FingerprintParams.from_dict(data.get("params"))
    except (TypeError, ValueError, AttributeError) as exc:
        raise CatalogueError(f"{path} is damaged: its fingerprint parameters: {exc}") from exc
    return ShardManifest(generation, tuple(shards), params, bool(data.get("converted")))


def write_manifest(directory: Path, manifest: ShardManifest) -> None:
    """Replace ``directory``'s manifest atomically (temporary file, fsync, rename, fsync of
    the directory)."""
    path = directory / MANIFEST_NAME
    temporary = directory / f".{MANIFEST_NAME}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(manifest.to_dict(), handle, indent=1)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_directory(directory)


def fsync_directory(directory: Path) -> None:
    """Make a directory's entries (renames, new files) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def shard_of(reference_id: str, shards: int) -> int:
    """The shard (0 .. ``shards`` - 1) that holds ``reference_id``.

    A stable hash: 64 bits of BLAKE2b of the id's UTF-8 bytes, modulo the shard count.
    """
    digest = hashlib.blake2b(reference_id.encode("utf-8"), digest_size=8)
    return int.from_bytes(digest.digest(), "big") % shards


def global_key(shard: int, local_key: int, generation: int = 0) -> int:
    """A reference key unique across shards: the shard's own key, the shard generation
    (modulo 1024, so that a key made before a reshard is not taken for another reference
    after it), and the shard number."""
    mark = generation % GENERATION_MODULUS
    return (((local_key << GENERATION_BITS) | mark) << SHARD_BITS) | shard


def split_key(key: int) -> tuple[int, int, int]:
    """Inverse of :func:`global_key`: ``(shard, local_key, generation modulo 1024)``."""
    shard = key & (MAX_SHARDS - 1)
    rest = key >> SHARD_BITS
    return shard, rest >> GENERATION_BITS, rest & (GENERATION_MODULUS - 1)


def _is_inside(relative: str) -> bool:
    """Whether a manifest entry names a directory inside the catalogue (no escape by ``..``
    or an absolute path)."""
    parts = Path(relative).parts
    return bool(parts) and not Path(relative).is_absolute() and ".." not in parts
