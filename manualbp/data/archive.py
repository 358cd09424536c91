"""Find a dataset's single archive file: in ``--data-dir``, in the cache, or by a verified download."""

from pathlib import Path

from .download import default_cache_dir, fetch, verify_file
from .idx import DataError

__all__ = ["locate_archive"]


def locate_archive(name, filename, mirrors, digests, data_dir=None, cache_dir=None, download=True,
                   verify=True):
    """Return the path of ``filename``, the archive of dataset ``name``.

    ``data_dir`` given: the archive must be there; it is checked against ``digests`` unless
    ``verify`` is false. Otherwise ``<cache_dir>/<name>/<filename>`` is used, downloaded from
    ``mirrors`` (and always verified) when it is absent or corrupt and ``download`` is true.
    """
    if data_dir is not None:
        path = Path(data_dir) / filename
        if not path.is_file():
            raise DataError(f"{name}: {filename} not found in data_dir {data_dir}; download it from "
                            f"{mirrors[0]}{filename} into that directory, or omit data_dir to use "
                            "the cache")
        if verify:
            verify_file(path, digests)
        return path
    cache = Path(cache_dir if cache_dir is not None else default_cache_dir()) / name
    path = cache / filename
    if not download:
        if not path.is_file():
            raise DataError(f"{name}: {path} not found and downloading is disabled (download=False); "
                            f"download {mirrors[0]}{filename} there or pass data_dir")
        if verify:
            verify_file(path, digests)
        return path
    return fetch(filename, mirrors, digests, cache)
