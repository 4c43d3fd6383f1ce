"""inference: reading, localizing, grading and explaining unseen studies, and the review
page of the result (`spinegrade predict`, the predict stage)."""
