"""A python-tuf fetcher that reads the repository from retained MQTT messages.

``mqtt:///<topic>`` names the topic verbatim. Metadata topics hold the file's bytes; target
topics hold a ``ChunkManifest`` and the content is read from content-addressed chunk topics,
a window of them in flight at a time (brokers drop QoS 1 messages beyond their queue
limits). MQTT has no "not found": after the SUBACK a token goes round trip through the
device's own probe topic, and if it comes back before a retained message, the answer is 404.

Only ``tuf.api.exceptions.DownloadError`` subclasses leave this module: ngclient wraps
errors of ``_fetch`` itself, but not errors raised later inside the returned iterator.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tuf.api.exceptions import (
    DownloadError,
    DownloadHTTPError,
    DownloadLengthMismatchError,
    SlowRetrievalError,
)
from tuf.ngclient.fetcher import FetcherInterface

from edge_agent import protocol
from edge_agent.exceptions import ProtocolError
from edge_agent.mqtt_link import MqttLink, TopicQueue
from edge_agent.trust import ContentMismatchError

log = logging.getLogger(__name__)

PARTIAL_MAX_AGE_S = 7 * 24 * 3600


class ChunkMismatchError(ContentMismatchError):
    """A chunk's bytes do not match the digest or length its manifest names."""


class MqttFetcher(FetcherInterface):
    """Fetches TUF metadata and targets through an ``MqttLink``.

    ``timeout`` bounds every wait (SUBACK, barrier, the gap before the next chunk).
    ``partial_dir`` keeps verified chunks of an unfinished download, so a broken connection
    resumes instead of starting over; ``None`` disables it.
    """

    def __init__(
        self,
        link: MqttLink,
        device_id: str,
        *,
        timeout: float = 30.0,
        window: int = 8,
        partial_dir: Path | None = None,
    ) -> None:
        self.link = link
        self.probe_topic = protocol.device_topic(device_id, "probe")
        self.timeout = timeout
        self.window = max(1, window)
        self.partial_dir = partial_dir
        self.chunk_topics_read = 0  # chunk topics subscribed (observability, tests)
        self.chunks_from_cache = 0
        self.topics_read: list[str] = []  # metadata and manifest topics, in order

    # -- FetcherInterface ------------------------------------------------------------------
    def _fetch(self, url: str) -> Iterator[bytes]:
        # A plain function returning an iterator: errors raised here are wrapped by ngclient.
        topic = topic_of(url)
        payload = self._read_retained(topic)
        if not topic.startswith(protocol.TUF_TARGETS_PREFIX):
            return iter((payload,))
        try:
            manifest = protocol.ChunkManifest.from_bytes(payload)
        except ProtocolError as e:
            raise DownloadError(f"{topic}: {e}") from e
        for ref in manifest.chunks:
            # Guards against endless data: no chunk may exceed the protocol's chunk size
            # (ngclient bounds the whole target by its signed length as chunks arrive).
            if ref.length > protocol.CHUNK_SIZE or ref.length <= 0:
                raise DownloadLengthMismatchError(f"{topic}: chunk of {ref.length} bytes")
        return self._chunks(manifest)

    # -- metadata and manifests --------------------------------------------------------------
    def _read_retained(self, topic: str) -> bytes:
        if not self.link.connected.is_set():
            raise DownloadError("not connected to the broker")
        self.topics_read.append(topic)
        q = self.link.open_queue(topic)
        try:
            if not self.link.wait_subscribed(q.mid, self.timeout):
                raise SlowRetrievalError(f"no SUBACK for {topic} within {self.timeout}s")
            try:
                return q.get_nowait()
            except queue.Empty:
                pass
            # Retained messages of an acknowledged subscription come before our own token.
            came_back = self.link.barrier(self.probe_topic, self.timeout)
            try:
                return q.get_nowait()
            except queue.Empty:
                pass
            if not came_back:
                raise SlowRetrievalError(f"probe did not come back within {self.timeout}s")
            raise DownloadHTTPError(f"{topic}: not found", 404)
        finally:
            self.link.close_queue(q)

    # -- chunks ----------------------------------------------------------------------------
    def _chunks(self, manifest: protocol.ChunkManifest) -> Iterator[bytes]:
        refs = manifest.chunks
        open_: dict[int, TopicQueue] = {}
        cached: dict[int, bytes] = {}
        try:
            next_sub = 0

            def top_up(upto: int) -> None:
                nonlocal next_sub
                batch: list[int] = []
                while next_sub < min(upto, len(refs)):
                    data = self._cache_get(refs[next_sub])
                    if data is not None:
                        cached[next_sub] = data
                    else:
                        batch.append(next_sub)
                    next_sub += 1
                if batch:
                    topics = [protocol.chunk_topic(refs[i].sha256) for i in batch]
                    self.chunk_topics_read += len(batch)
                    for i, q in zip(batch, self.link.open_queues(topics), strict=True):
                        open_[i] = q

            for i, ref in enumerate(refs):
                top_up(i + self.window)  # a window of chunks in flight
                if i in cached:
                    self.chunks_from_cache += 1
                    data = cached.pop(i)
                else:
                    data = self._await_chunk(open_.pop(i), ref)
                yield data
            self._cache_drop(refs)  # complete: ngclient verifies the whole target next
        except DownloadError:
            raise
        except Exception as e:  # only DownloadErrors may leave the iterator
            raise DownloadError(f"chunk download failed: {e}") from e
        finally:
            for q in open_.values():
                self.link.close_queue(q)

    def _await_chunk(self, q: TopicQueue, ref: protocol.ChunkRef) -> bytes:
        try:
            # After a reconnect the link subscribes again and the retained chunk comes back.
            data = q.get(timeout=self.timeout)
        except queue.Empty:
            raise SlowRetrievalError(
                f"chunk {ref.sha256[:12]} did not arrive within {self.timeout}s"
            ) from None
        finally:
            self.link.close_queue(q)  # chunk topics are retained: stop receiving them
        # Guards against substitution and endless data per chunk, before ngclient's
        # whole-target check: the bytes must match the digest and length in the manifest.
        if len(data) != ref.length or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise ChunkMismatchError(f"chunk {ref.sha256[:12]} does not match its digest")
        self._cache_put(ref, data)
        return data

    # -- resume cache ----------------------------------------------------------------------
    def _cache_path(self, ref: protocol.ChunkRef) -> Path | None:
        if self.partial_dir is None:
            return None
        return self.partial_dir / ref.sha256

    def _cache_get(self, ref: protocol.ChunkRef) -> bytes | None:
        path = self._cache_path(ref)
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except OSError:
            return None
        # Guards against a corrupted or planted cache file: re-verify before use.
        if len(data) != ref.length or hashlib.sha256(data).hexdigest() != ref.sha256:
            path.unlink(missing_ok=True)
            return None
        return data

    def _cache_put(self, ref: protocol.ChunkRef, data: bytes) -> None:
        path = self._cache_path(ref)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".chunk.")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as e:  # the cache only saves time; a full disk must not fail the fetch
            log.warning("cannot cache chunk %s: %s", ref.sha256[:12], e)

    def _cache_drop(self, refs: tuple[protocol.ChunkRef, ...]) -> None:
        if self.partial_dir is None:
            return
        for ref in refs:
            (self.partial_dir / ref.sha256).unlink(missing_ok=True)
        self.prune_partial()

    def prune_partial(self, max_age_s: float = PARTIAL_MAX_AGE_S) -> None:
        """Remove cached chunks of downloads abandoned long ago."""
        if self.partial_dir is None or not self.partial_dir.is_dir():
            return
        cutoff = time.time() - max_age_s
        for p in self.partial_dir.iterdir():
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
            except OSError:
                pass


def topic_of(url: str) -> str:
    """``mqtt:///<topic>`` -> ``<topic>`` (verbatim)."""
    if not url.startswith(protocol.MQTT_URL_SCHEME):
        raise DownloadError(f"not an MQTT URL: {url!r}")
    topic = url[len(protocol.MQTT_URL_SCHEME) :]
    # Guards against wildcard subscriptions and system topics through crafted paths.
    if not topic or "+" in topic or "#" in topic or topic.startswith("$") or "\0" in topic:
        raise DownloadError(f"unsafe topic in {url!r}")
    return topic
