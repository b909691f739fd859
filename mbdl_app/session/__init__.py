"""The live session: sources -> engines -> result bus, with a lossless recorder."""

from mbdl_app.session.bus import Result, ResultBus
from mbdl_app.session.session import Session, SessionStatus

__all__ = ["Result", "ResultBus", "Session", "SessionStatus"]
