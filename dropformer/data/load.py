"""Pick the reader from a ``data`` config section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dropformer.data import Corpus
from dropformer.errors import ConfigError


def load_corpus(corpus: str, root: str | Path | None, manifest: str | Path | None = None,
                labels: tuple[str, ...] | None = None, label_map: dict[str, Any] | None = None,
                strict: bool = False) -> Corpus:
    """Read ``corpus`` (emodb, iemocap, meld or manifest), log its report, honour ``strict``."""
    if corpus == "manifest":
        if manifest is None:
            raise ConfigError("data.manifest is required with data.corpus=manifest; set it to a CSV file")
        from dropformer.data.manifest import read_manifest
        result = read_manifest(manifest, labels)
    else:
        if root is None:
            raise ConfigError(f"data.root is required with data.corpus={corpus}; pass --set data.root=/path/to/{corpus}")
        kw: dict[str, Any] = {} if labels is None else {"labels": labels}
        if corpus == "emodb":
            from dropformer.data.emodb import read_emodb
            result = read_emodb(root, label_map=label_map, **kw)
        elif corpus == "iemocap":
            from dropformer.data.iemocap import read_iemocap
            result = read_iemocap(root, label_map=label_map, **kw)
        elif corpus == "meld":
            from dropformer.data.meld import read_meld
            result = read_meld(root, **kw)
        else:
            raise ConfigError(f"data.corpus={corpus!r} is unknown; use emodb, iemocap, meld or manifest")
    result.report.check(strict)
    return result
