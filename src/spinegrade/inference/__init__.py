"""inference: reading, localising, grading and explaining unseen studies (`spinegrade predict`)."""
