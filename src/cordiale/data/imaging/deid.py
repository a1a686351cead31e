"""De-identification check for DICOM headers: which identifying attributes a file still carries.

A site's images must reach a study de-identified. The contract names the DICOM keywords that must
be absent or empty (``identifier_fields``); :func:`find_identifiers` walks a header, nested
sequences included, and returns the *names* of those that hold a value. It never returns or logs
the values themselves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["DEFAULT_IDENTIFIER_FIELDS", "find_identifiers", "unknown_keywords"]

#: Direct identifiers a de-identified DICOM file must not carry (PS3.15 Annex E, a subset).
DEFAULT_IDENTIFIER_FIELDS: tuple[str, ...] = (
    "PatientName",
    "PatientBirthDate",
    "PatientAddress",
    "OtherPatientIDs",
    "PatientTelephoneNumbers",
)

_KEYWORD = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")


def unknown_keywords(keywords: Iterable[str]) -> list[str]:
    """The keywords that are not DICOM data-dictionary keywords (a misspelt one would never match).

    Without pydicom installed only the form of each keyword is checked.
    """
    bad = [k for k in keywords if not _KEYWORD.match(k)]
    try:
        from pydicom.datadict import tag_for_keyword
    except ImportError:  # the imaging extra is optional; the form check above still applies
        return bad
    return bad + [k for k in keywords if _KEYWORD.match(k) and tag_for_keyword(k) is None]


def find_identifiers(dataset: Dataset, fields: Iterable[str]) -> list[str]:
    """Keywords among ``fields`` that hold a non-empty value anywhere in ``dataset`` (sorted)."""
    wanted = set(fields)
    if not wanted:
        return []
    found = {
        elem.keyword for elem in dataset.iterall() if elem.keyword in wanted and not elem.is_empty
    }
    return sorted(found)
