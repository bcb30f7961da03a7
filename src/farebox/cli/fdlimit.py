"""Lift the open-files limit of a server process to what the system allows it.

Every open stream costs the gateway two descriptors (the client's socket and the
upstream's), so the common default soft limit of 1,024 would refuse connections long
before the machine runs out of anything: 10,000 concurrent streams need about 20,000.
Only the soft limit is raised, up to the hard limit an administrator set; raising the
hard limit itself is theirs to do (`ulimit -Hn`, systemd's LimitNOFILE=).
"""

from __future__ import annotations

import logging

log = logging.getLogger("farebox")

# With no hard limit (RLIM_INFINITY) the kernel still caps descriptors at fs.nr_open,
# whose default is 1,048,576; setting an infinite soft limit would fail, so ask for this.
_UNBOUNDED_SOFT = 1 << 20


def raise_open_files_limit() -> int | None:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit. Returns the soft limit now in
    effect, or None where the platform has no such limit (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = _UNBOUNDED_SOFT if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as e:  # e.g. a sandbox that forbids it: serve with what we have
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, want, e)
    return soft
