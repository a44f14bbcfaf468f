"""Built-in corpus readers; importing this package registers them all.

One module per corpus layout (each module's docstring documents that corpus's published
file naming), plus two generic readers: ``folder`` (one sub-folder per emotion) and ``table``
(a CSV/TSV listing).
"""

from emobridge.corpora.readers import (  # noqa: F401
    aesdd,
    ased,
    cafe,
    cremad,
    emodb,
    emotiontts,
    emovo,
    esd,
    folder,
    iemocap,
    ravdess,
    savee,
    shemo,
    subesco,
    table,
    tess,
    turevdb,
    urdu,
)
