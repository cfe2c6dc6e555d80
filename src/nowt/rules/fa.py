"""Feedback alignment (Lillicrap et al. 2016): a fixed random matrix B carries the error in place of W."""

from nowt.rules.base import RandomFeedbackRule


class FeedbackAlignment(RandomFeedbackRule):
    """B is a buffer drawn once (see `random_matrix` for the distribution) and never trained."""

    name = "fa"
    tied_state = ("feedback",)  # one W, one B: layers sharing W would otherwise each align W to their own
