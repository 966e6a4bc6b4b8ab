"""The recovery plan's scenario 3, storage failure, in Python: the same
scenario as plugins/storage-failover (Rust), step for step and call for call.
Detect lost or corrupted objects in the primary bucket by comparing its
listing and checksums with the secondary's, restore them with host-side
copies, verify integrity and an upload/download round trip.

Grants it needs: `primary` with read, list, write, delete; `secondary` with
read, list. Built with componentize-py against wit/ (see build.sh)."""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import clock, log, s3
from wit_world.imports import drhost_plugin_types as t

PRIMARY = "primary"
SECONDARY = "secondary"
CANARY_PREFIX = ".drhost-canary/"
REPOINT_COMMAND = """echo '{"bucket": "primary"}' > config/storage.json"""


def describe(e: Err) -> str:
    """A capability error as one line: `denied: …`, `not found: …`."""
    v = e.value
    names = {
        "Error_Denied": "denied",
        "Error_NotFound": "not found",
        "Error_TooLarge": "too large",
        "Error_Invalid": "invalid",
        "Error_Unavailable": "unavailable",
        "Error_Planned": "planned",
    }
    return f"{names.get(type(v).__name__, 'error')}: {v.value}"


def list_all(alias: str, prefix: str) -> list:
    out, token = [], None
    while True:
        page = s3.list_objects(alias, prefix, token, 1000)
        out.extend(page.objects)
        if page.next_token is None:
            return out
        token = page.next_token


class Failure(Exception):
    pass


def compare():
    """(missing, corrupted, checked): keys lost from or differing in the primary."""
    try:
        secondary = list_all(SECONDARY, "")
    except Err as e:
        raise Failure(f"listing secondary: {describe(e)}")
    try:
        primary = {o.key: o for o in list_all(PRIMARY, "")}
    except Err as e:
        raise Failure(f"listing primary: {describe(e)}")
    missing, corrupted, checked = [], [], 0
    for want in secondary:
        if want.key.startswith(CANARY_PREFIX):
            continue
        checked += 1
        have = primary.get(want.key)
        if have is None:
            missing.append(want.key)
        elif have.size != want.size:
            corrupted.append(want.key)
        else:
            try:
                a = s3.checksum(PRIMARY, want.key)
                b = s3.checksum(SECONDARY, want.key)
            except Err as e:
                raise Failure(describe(e))
            if a != b:
                corrupted.append(want.key)
    return missing, corrupted, checked


def f(key, value) -> t.Finding:
    return t.Finding(key=key, value=str(value))


def confirm_failure() -> t.Outcome:
    try:
        missing, corrupted, checked = compare()
    except Failure as e:
        if str(e).startswith("listing primary"):
            return t.Outcome_Detected([f("primary-unreachable", e)])
        return t.Outcome_Failed(str(e))
    out = [f("objects-checked", checked), f("missing", len(missing)), f("corrupted", len(corrupted))]
    if not missing and not corrupted:
        log.log(log.Level.INFO, f"primary matches secondary ({checked} objects)")
        return t.Outcome_Ok(out)
    log.log(
        log.Level.WARN,
        f"primary bucket damaged: {len(missing)} missing, {len(corrupted)} corrupted of {checked}",
    )
    out.extend(f("damaged", k) for k in missing + corrupted)
    return t.Outcome_Detected(out)


def restore(context) -> t.Outcome:
    restored = size = 0
    for key in [c.value for c in context if c.key == "damaged"]:
        try:
            o = s3.copy(SECONDARY, key, PRIMARY, key)
        except Err as e:
            return t.Outcome_Failed(f"restoring {key} from secondary: {describe(e)}")
        restored += 1
        size += o.size
    log.log(log.Level.INFO, f"restored {restored} objects ({size} bytes) from secondary")
    return t.Outcome_Ok([f("restored", restored), f("bytes", size)])


def repoint() -> t.Outcome:
    """The application reads the bucket to use from config/storage.json."""
    try:
        s3.put("config", "storage.json", b'{"bucket": "primary"}\n')
    except Err as e:
        return t.Outcome_Failed(f"writing storage.json: {describe(e)}")
    return t.Outcome_Ok([f("bucket", PRIMARY), f("command", REPOINT_COMMAND)])


def verify_integrity() -> t.Outcome:
    try:
        missing, corrupted, checked = compare()
    except Failure as e:
        return t.Outcome_Failed(str(e))
    if not missing and not corrupted:
        return t.Outcome_Ok([f("objects-verified", checked)])
    return t.Outcome_Failed(
        f"primary still differs from secondary: {len(missing)} missing, {len(corrupted)} corrupted"
    )


def verify_upload_download() -> t.Outcome:
    key = f"{CANARY_PREFIX}{clock.now_ms()}"
    body = f"drhost canary {key}".encode()
    error = None
    got = None
    try:
        s3.put(PRIMARY, key, body)
    except Err as e:
        error = f"upload failed: {describe(e)}"
    if error is None:
        try:
            got = s3.get(PRIMARY, key)
        except Err as e:
            error = f"download failed: {describe(e)}"
    # Remove the canary whatever happened, so the bucket is left as found.
    try:
        s3.delete(PRIMARY, key)
        cleanup = None
    except Err as e:
        cleanup = describe(e)
    if error is not None:
        return t.Outcome_Failed(error)
    if cleanup is not None:
        return t.Outcome_Failed(f"could not delete canary {key}: {cleanup}")
    if bytes(got) != body:
        return t.Outcome_Failed("downloaded canary differs from upload")
    return t.Outcome_Ok([f("canary", key), f("round-trip", "ok")])


def step(id, phase, budget, mutating, description) -> t.Step:
    return t.Step(
        id=id,
        phase=phase,
        component="object-storage",
        budget_seconds=budget,
        mutating=mutating,
        description=description,
    )


class Plugin(exports.Plugin):
    def info(self) -> t.ScenarioInfo:
        return t.ScenarioInfo(
            name="storage-failover",
            version="0.1.0",
            description="Scenario 3: restore lost or corrupted objects of the primary bucket from the secondary",
            components=[
                t.Component(
                    name="object-storage",
                    kind=t.ComponentKind.STORAGE,
                    priority=t.Priority.P1,
                    rto_seconds=3600,
                    rpo_seconds=900,
                    description="user files in the primary bucket, replicated to the secondary",
                )
            ],
            steps=[
                step("confirm-failure", t.Phase.DETECT, 300, False,
                     "compare the primary's listing and checksums with the secondary's"),
                step("restore-from-secondary", t.Phase.RECOVER, 1800, True,
                     "copy every missing or corrupted object back from the secondary"),
                step("repoint-application", t.Phase.RECOVER, 120, True,
                     "tell the application to use the restored primary (config/storage.json)"),
                step("verify-integrity", t.Phase.VERIFY, 600, False,
                     "every object of the secondary is in the primary with the same sha256"),
                step("verify-upload-download", t.Phase.VERIFY, 600, True,
                     "upload, download and delete a canary object in the primary"),
            ],
        )

    def run_step(self, id: str, context: list[t.Finding]) -> t.Outcome:
        if id == "confirm-failure":
            return confirm_failure()
        if id == "restore-from-secondary":
            return restore(context)
        if id == "repoint-application":
            return repoint()
        if id == "verify-integrity":
            return verify_integrity()
        if id == "verify-upload-download":
            return verify_upload_download()
        return t.Outcome_Failed(f"unknown step {id}")
