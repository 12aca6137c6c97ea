"""Certificate renewal before expiry, authenticated by the device key itself."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from pathlib import Path

from edge_agent.exceptions import EnrollmentError

log = logging.getLogger(__name__)


def renew_if_due(
    server_url: str,
    device_id: str,
    identity_dir: Path,
    *,
    within_days: float,
    timeout: float = 30.0,
) -> bool:
    """Renew when the certificate expires within ``within_days``; True if it was renewed.

    The old certificate stays valid until it expires, so a failure here (server down) only
    means trying again later; the agent keeps working meanwhile.
    """
    from edge_agent.identity import DeviceIdentity

    identity = DeviceIdentity.load(identity_dir)
    if not identity.enrolled or not identity.needs_renewal(within_days):
        return False
    body = json.dumps(
        {"csr": identity.csr_pem(device_id).decode(), "certificate": identity.cert_path.read_text()}
    ).encode()
    req = urllib.request.Request(
        f"{server_url.rstrip('/')}/api/v1/devices/{device_id}/certificate",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer = json.loads(resp.read())
        identity.save_certificate(answer["certificate"].encode(), answer["ca_certificate"].encode())
    except urllib.error.HTTPError as e:
        raise EnrollmentError(f"renewal refused ({e.code}): {e.read()[:300]!r}") from e
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as e:
        raise EnrollmentError(f"renewal failed: {e}") from e
    log.info("certificate renewed; now valid until %s", identity.not_after)
    return True
