"""The course: chapters in ``course/`` (one notebook each), their exercises and checker
(:mod:`manualbp.course.exercises`), reference solutions (:mod:`manualbp.course.solutions`) and
the renderer that turns each executed chapter into Markdown (:mod:`manualbp.course.render`)."""
from .exercises import EXERCISES, Exercise, check

__all__ = ["EXERCISES", "Exercise", "check"]
