"""Editors: one file each, all answering the same protocol (:class:`mendlab.editors.base.Editor`)."""

from mendlab.editors.base import Editor, MismatchedModelError, as_batch, fingerprint
from mendlab.editors.mend import MEND

__all__ = ["MEND", "Editor", "MismatchedModelError", "as_batch", "fingerprint"]
