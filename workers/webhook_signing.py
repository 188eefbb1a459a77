"""Webhook endpoints and secrets, derived from one master secret so nothing is stored.

Each create names its job in the endpoint URL (`{base}/{job_id}/{token}`) and carries its
batch's secret, which PiAPI echoes in `x-webhook-secret`. Both are HMACs of the master
secret (`PIAPI_BULK_WEBHOOK_SECRET`), so the receiver can check them without a lookup and
a forged call cannot name a job it was not given.
"""

from __future__ import annotations

import hashlib
import hmac
from base64 import urlsafe_b64encode


def _mac(master: bytes, label: str, length: int) -> str:
    digest = hmac.new(master, label.encode(), hashlib.sha256).digest()
    return urlsafe_b64encode(digest).decode().rstrip("=")[:length]


class WebhookSigner:
    """Makes and checks the per-batch secret and the per-job URL token."""

    def __init__(self, base_url: str, master_secret: str) -> None:
        if len(master_secret) < 16:
            raise ValueError("the webhook master secret must be at least 16 characters")
        self.base_url = base_url.rstrip("/")
        self._master = master_secret.encode()

    def batch_secret(self, batch_id: str) -> str:
        """The secret PiAPI sends back in x-webhook-secret for this batch's tasks."""
        return _mac(self._master, f"batch:{batch_id}", 32)

    def job_token(self, job_id: int) -> str:
        """The token in a job's webhook URL."""
        return _mac(self._master, f"job:{job_id}", 22)

    def endpoint(self, job_id: int) -> str:
        """The URL PiAPI calls for this job's task."""
        return f"{self.base_url}/{job_id}/{self.job_token(job_id)}"

    def config_for(self, batch_id: str, job_id: int) -> dict[str, str]:
        """Keyword arguments for `PiAPIClient.create_task`."""
        return {"webhook_endpoint": self.endpoint(job_id),
                "webhook_secret": self.batch_secret(batch_id)}

    def valid_token(self, job_id: int, token: str) -> bool:
        """Constant-time check of a URL token."""
        return hmac.compare_digest(self.job_token(job_id).encode(), token.encode())

    def valid_secret(self, batch_id: str, secret: str) -> bool:
        """Constant-time check of an x-webhook-secret header."""
        return hmac.compare_digest(self.batch_secret(batch_id).encode(), secret.encode())
