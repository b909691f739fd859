"""Errors of the training stack: each names the stage, file or recipe and what is wrong."""

from mbdl_app.errors import AppError


class TrainingError(AppError):
    """Training cannot go on as configured: a bad config or dataset, a non-finite loss, a
    checkpoint that does not match the run resuming from it."""


class UnknownRecipeError(TrainingError):
    """`get_recipe` was asked for a name no recipe is registered under."""
