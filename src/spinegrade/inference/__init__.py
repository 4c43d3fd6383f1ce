"""inference: reading, localizing, grading and explaining unseen studies (`spinegrade predict`)."""
