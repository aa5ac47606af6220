"""The official `kaggle` client, authenticated, and its HTTP errors said in one line.

The download stage fetches with it and the `submit` command uploads with it.
"""

from __future__ import annotations

import contextlib
import io

from .common import UserError


def kaggle_api():
    """An authenticated `KaggleApi`, or a one-line UserError saying how to give credentials.

    Importing `kaggle` already tries to authenticate and prints a page of help on
    failure; we silence that and check for ourselves.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi

        api = KaggleApi()
        try:
            api.authenticate()
        except SystemExit:
            raise UserError(
                "no Kaggle credentials: set KAGGLE_API_TOKEN, or KAGGLE_USERNAME and KAGGLE_KEY, "
                "or put kaggle.json in ~/.kaggle (https://www.kaggle.com/settings -> API)"
            ) from None
    return api


def explain_http_error(exc: Exception, competition: str) -> UserError | None:
    """Turn the client's HTTP errors into a one-line, actionable message."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status is None:
        return None
    if status == 401:
        return UserError(
            "Kaggle rejected the credentials (401): check KAGGLE_API_TOKEN / KAGGLE_USERNAME+KAGGLE_KEY "
            "or ~/.kaggle/kaggle.json, and create a new token at https://www.kaggle.com/settings if needed"
        )
    if status == 403:
        return UserError(
            f"Kaggle refused access to '{competition}' (403): accept the competition rules at "
            f"https://www.kaggle.com/competitions/{competition}/rules and run again"
        )
    if status == 404:
        return UserError(f"Kaggle has no competition '{competition}' (404): check data.competition in params.yaml")
    return UserError(f"Kaggle answered HTTP {status} for '{competition}': {exc}; try again later")
