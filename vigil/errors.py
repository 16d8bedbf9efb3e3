"""Errors a person can act on: the CLI prints their message and exits non-zero, without a stack trace."""

from vigil.credentials import mask_url


class VigilError(Exception):
    """A failure with a message that says what happened and what to do next."""

    exit_code = 1


class MlflowUnavailable(VigilError):
    def __init__(self, uri: str, detail: str = "") -> None:
        hint = "start it with `vigil mlflow up`" if uri.startswith("http://127.0.0.1") or "localhost" in uri else (
            "check MLFLOW_TRACKING_URI / VIGIL_MLFLOW_TRACKING_URI"
        )
        suffix = f" ({detail})" if detail else ""
        self.uri = mask_url(uri)  # the message is printed and logged: never a password in it
        super().__init__(f"MLflow server not reachable at {self.uri}{suffix}: {hint}.")
