"""The web grading service (``spinegrade serve``): FastAPI around the study grader."""
