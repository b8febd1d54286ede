"""The receiver's own error hierarchy.

Adapters (ICE gateway, object stores, thumbnailer) translate vendor exceptions into these, chained with
``from``, so the pipeline decides retry/reject/fail on our types alone.
"""

from __future__ import annotations


class ReceiverError(Exception):
    """Base of every domain error."""

    code = "ReceiverError"


class Transient(ReceiverError):
    """Worth retrying later: throttling, 5xx, timeouts, refused connections, CRC mismatch."""

    code = "Transient"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        # Seconds the remote asked us to wait (ICE's x-acs-retry-after), if it said.
        self.retry_after = retry_after


class CredentialUnavailable(Transient):
    """No usable credential for an account right now (a refresh failed, or only an expiring one is at hand).

    Nothing was sent. The event waits and retries as for throttling, and the wait does not count as one of
    its attempts: a credential problem never fails an event (product.md section 7)."""

    code = "CredentialUnavailable"


class JobNotFound(ReceiverError):
    """ICE does not know this job id."""

    code = "JobNotFound"


class ObjectNotFound(ReceiverError):
    """The OSS object (or bucket) does not exist."""

    code = "ObjectNotFound"


class Rejected(ReceiverError):
    """The event disagrees with the job (possible spoof) or names an unsafe key; never fetched."""

    code = "Rejected"


class ImageError(ReceiverError):
    """The bytes are not an acceptable image; retrying will not help."""

    code = "ImageError"


class NotAJpeg(ImageError):
    code = "NotAJpeg"


class TruncatedImage(ImageError):
    code = "TruncatedImage"


class TooManyPixels(ImageError):
    code = "TooManyPixels"


class TooLarge(ImageError):
    """The object exceeds RECEIVER_MAX_IMAGE_BYTES."""

    code = "TooLarge"


class StoreError(ReceiverError):
    """A permanent failure of an object store other than not-found (access denied, bad bucket)."""

    code = "StoreError"


class IceError(ReceiverError):
    """ICE refused the request for a reason retrying will not fix (credentials, signature, bad parameters)."""

    code = "IceError"

    def __init__(self, message: str, ice_code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.ice_code = ice_code
        self.status = status
