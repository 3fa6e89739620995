"""WordNet for METEOR's synonym stage, found offline.

NLTK normally downloads WordNet at run time, which cannot happen offline, and no package on the Python index
carries the data. tunelab reads the WordNet 3.0 database where an operating system installs it (Debian and
Ubuntu: ``apt-get install wordnet-base``, into /usr/share/wordnet; ``make install`` does this where it may), or
an NLTK data folder that already holds ``corpora/wordnet``. The one file NLTK needs that Debian ships only as a
man page, ``lexnames``, comes with tunelab (assets/wordnet). Without WordNet, METEOR is reported as unavailable,
never computed without its synonym stage.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from pathlib import Path
from typing import Any

# Where WordNet's database files (data.noun, index.noun, ...) may live, in order.
_CANDIDATES = ("/usr/share/wordnet", "/usr/local/share/wordnet", "/usr/local/WordNet-3.0/dict",
               "/opt/homebrew/share/wordnet", "/usr/local/opt/wordnet/dict")
_LEXNAMES = Path(__file__).resolve().parents[1] / "assets" / "wordnet" / "lexnames"
INSTALL_HINT = ("WordNet 3.0 was not found, so METEOR (whose synonym stage needs it) is not computed; install it "
                "with `apt-get install wordnet-base` (Debian/Ubuntu), or point WNSEARCHDIR at a WordNet dict folder")


def _has_database(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ("data.noun", "index.noun", "verb.exc"))


def find_wordnet() -> Path | None:
    """The folder holding WordNet's database files, or None."""
    folders = [os.environ.get("WNSEARCHDIR"), os.environ.get("WNHOME") and f"{os.environ['WNHOME']}/dict",
               *_CANDIDATES]
    try:
        import nltk

        folders += [str(Path(root) / "corpora" / "wordnet") for root in nltk.data.path]
    except ImportError:
        pass
    return next((Path(folder) for folder in folders if folder and _has_database(Path(folder))), None)


@functools.cache
def load_wordnet() -> Any | None:
    """NLTK's WordNet reader on the database found by ``find_wordnet`` (None when there is none)."""
    folder = find_wordnet()
    if folder is None:
        return None
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    if str(folder) not in nltk.data.path:
        nltk.data.path.append(str(folder))  # NLTK reads only inside its data path

    class _Reader(WordNetCorpusReader):
        def open(self, fileid: str) -> Any:
            if fileid == "lexnames" and not (folder / "lexnames").is_file():
                return io.StringIO(_LEXNAMES.read_text(encoding="utf-8"))
            return super().open(fileid)

        def map_wn(self, version: str = "wordnet") -> None:
            return None  # the mapping between WordNet versions is for multilingual lookups, unused here

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": none are used
        return _Reader(str(folder), None)
