"""The model bundle: the on-disk contract between the trainer and everything after it.

A bundle is one directory of plain ``.npy`` and JSON files plus a
``manifest.json`` holding each file's SHA-256, so it can be inspected without
this code and verified before anything serves from it.
"""

from movierec.bundle.atomic import staged_directory
from movierec.bundle.csr import CSR
from movierec.bundle.manifest import MANIFEST_NAME, Manifest, read_manifest, sha256_file, write_manifest
from movierec.bundle.model import ItemMetadata, ModelBundle, read_model_bundle, write_model_bundle
from movierec.bundle.store import VersionedStore

__all__ = [
    "CSR",
    "MANIFEST_NAME",
    "ItemMetadata",
    "Manifest",
    "ModelBundle",
    "VersionedStore",
    "read_manifest",
    "read_model_bundle",
    "sha256_file",
    "staged_directory",
    "write_manifest",
    "write_model_bundle",
]
