"""The Score page's uploads, kept in ``st.session_state`` so they survive a visit to another page.

Streamlit drops a widget's value when its page is left, so the file uploader comes back empty.
The decoded files are therefore kept under the plain key :data:`STORE` (a list of
:class:`Upload`, in upload order) until the user clears them:

- the uploader's ``on_change`` (:func:`sync`) mirrors what the user does in the widget: files added
  to it are decoded and appended, files removed from it (its ✕) are dropped;
- a fresh, empty uploader (after navigation) changes nothing: the stored files stay, and files added
  to it afterwards are appended to them;
- :func:`clear` (the "Clear" button) drops them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import streamlit as st

from rose_core.imageio import InvalidImage, decode_image
from studio.state import digest

STORE = "score_uploads"
"""Session key of the decoded uploads (a list of :class:`Upload`)."""
WIDGET = "score_files"
"""Key of the file uploader widget (with a suffix after each "Clear", which gives a new, empty widget)."""
_CLEARED = "score_uploads_cleared"
_IN_WIDGET = "score_uploads_in_widget"
"""Session key of the ids of the files the live uploader widget holds."""


@dataclass(frozen=True)
class Upload:
    id: str
    """SHA-256 of the file's name and bytes."""
    name: str
    array: np.ndarray | None
    """uint8 (H, W, C); None for a file that could not be decoded."""
    format: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    error: str = ""
    """Why the file was not scored (empty when it was decoded)."""


def _decode(name: str, data: bytes) -> Upload:
    uid = digest(name, data)
    try:
        d = decode_image(data, name)
    except InvalidImage as exc:
        return Upload(uid, exc.name, None, error=exc.reason)
    return Upload(uid, d.name, d.array, d.format, tuple(d.notes))


def stored() -> list[Upload]:
    return list(st.session_state.get(STORE, []))


def widget_key() -> str:
    n = st.session_state.get(_CLEARED, 0)
    return WIDGET if n == 0 else f"{WIDGET}_{n}"


def sync() -> None:
    """``on_change`` of the uploader: add the files it gained, drop the files it lost."""
    files = st.session_state.get(widget_key()) or []
    current = {digest(f.name, f.getvalue()): f for f in files}
    before = set(st.session_state.get(_IN_WIDGET, ()))
    removed = before - set(current)
    kept = [u for u in stored() if u.id not in removed]
    known = {u.id for u in kept}
    kept += [_decode(f.name, f.getvalue()) for uid, f in current.items() if uid not in known]
    st.session_state[STORE] = kept
    st.session_state[_IN_WIDGET] = set(current)


def widget_is_fresh() -> None:
    """Call before drawing the uploader: when Streamlit dropped its value (the page was left), it holds
    no file any more, so removals from the new widget must not drop the stored files."""
    if widget_key() not in st.session_state:
        st.session_state[_IN_WIDGET] = set()


def clear() -> None:
    """The "Clear" button: drop every stored upload (and empty the uploader)."""
    st.session_state[STORE] = []
    st.session_state[_IN_WIDGET] = set()
    st.session_state[_CLEARED] = st.session_state.get(_CLEARED, 0) + 1  # a new, empty uploader
