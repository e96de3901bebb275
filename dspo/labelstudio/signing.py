"""Signed, expiring URLs for the images of pushed tasks.

Label Studio's labeling page is on another origin and its annotators have no account here, so the
images it shows cannot be fetched with a session. Each URL instead carries an expiry time and an HMAC
of its path and expiry under the server's secret key (DSPO_SECRET_KEY): the server checks it without
a database lookup, an URL cannot be changed to reach another image, and it stops working when it
expires (push again to hand out fresh ones) or when the secret key is changed. The route that serves
them (annotation_server/routes/labelstudio.py) serves only task crops, the images that a pushed task
shows anyway, nothing else.
"""

import hashlib
import hmac
from urllib.parse import urlencode

from dspo.errors import Forbidden

API_PREFIX = "/api/v1/labelstudio/images"
_DOMAIN = b"dspo-labelstudio-image\n"  # keeps these MACs apart from every other use of the secret


def lq_path(task_id: int) -> str:
    return f"{API_PREFIX}/tasks/{task_id}/lq"


def candidate_path(task_id: int, candidate_id: int) -> str:
    return f"{API_PREFIX}/tasks/{task_id}/candidates/{candidate_id}"


def signature(secret_key: str, path: str, expires: int) -> str:
    message = _DOMAIN + f"{path}\n{expires}".encode()
    return hmac.new(secret_key.encode(), message, hashlib.sha256).hexdigest()


def signed_url(public_url: str, secret_key: str, path: str, expires: int) -> str:
    """The absolute URL of `path`, valid until the Unix time `expires`."""
    query = urlencode({"expires": expires, "signature": signature(secret_key, path, expires)})
    return f"{public_url.rstrip('/')}{path}?{query}"


def check(secret_key: str, path: str, expires: int, given: str, now: float) -> None:
    """Forbidden unless `given` is the signature of this path and expiry and it has not expired."""
    expected = signature(secret_key, path, expires).encode()
    # As bytes: compare_digest takes only ASCII strings, and a query string may hold anything.
    if not hmac.compare_digest(given.encode(), expected):
        raise Forbidden("the image URL's signature is wrong: use the URL that `dspo labelstudio push` made")
    if expires < now:
        raise Forbidden("the image URL has expired: run `dspo labelstudio push` again to refresh the URLs")
