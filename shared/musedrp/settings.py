"""Settings of the services, read once in ``main()`` from ``MUSEDRP_*`` variables.

An optional TOML file (``MUSEDRP_CONFIG``) gives defaults that the environment overrides.
Secrets (the S3 secret key, the broker password) come only from the environment or from a
mounted file (``MUSEDRP_S3_SECRET_KEY_FILE``), never from the TOML file, so that a config
map can be shown to anyone.
"""

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from musedrp.errors import ConfigError

SECRETS = ("s3_secret_key", "amqp_password")


class Settings(BaseModel):
    """Everything a service needs to know about its surroundings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    amqp_host: str = "127.0.0.1"
    amqp_port: int = 5672
    amqp_user: str = "guest"
    amqp_password: SecretStr = SecretStr("guest")
    amqp_vhost: str = "/"
    amqp_heartbeat_s: int = 30

    s3_endpoint: str = "http://127.0.0.1:8333"
    s3_bucket: str = "musedrp"
    s3_access_key: str = "musedrp"
    s3_secret_key: SecretStr = SecretStr("")
    s3_region: str = "us-east-1"
    s3_timeout_s: float = 30.0
    s3_attempts: int = 3  # within one job; beyond, the job is retried through the delay queue

    db_url: str = "postgresql+psycopg://postgres@127.0.0.1/musedrp"
    scratch: Path = Path("/tmp/musedrp-scratch")  # noqa: S108 - overridden in images
    cache_gb: float = Field(8.0, ge=0)  # objects kept under scratch/cache by content; 0: none
    cpus: str = ""  # e.g. "0-1"; empty: this process's affinity
    memory_gb: float = 20.0  # what the largest (fan-in) worker may use; the planner fits to it
    admission: Path | None = None  # a file shared by one machine's workers (admission.py)
    timeout_s: float | None = None  # overrides every stage's recipe timeout (tests, emergencies)
    retry_delays_s: tuple[int, ...] = (30, 120, 600)  # one delay queue each; then dead letter
    delivery_limit: int = 3  # redeliveries of a message whose worker died (OOM, SIGKILL)
    plan_quiet_s: float = 10.0  # the planner plans after this long without a new frame
    plan_every_s: float = 10.0  # ... and while frames keep coming, this long after the first
    # one no plan holds yet (a long upload's first jobs start while the rest still comes)
    plan_max_wait_s: float = 30.0  # frames count as arriving (templates may grow) until none
    # has come for this long
    metrics_port: int = 0  # 0: no metrics server
    liveness_s: float = 120.0  # `musedrp health` fails once the consume loop is still this long
    log_format: str = Field("auto", pattern="^(auto|json|text)$")
    ifus: tuple[int, ...] = ()  # plan only these IFUs (default: every IFU in the data)

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        if any(d <= 0 for d in self.retry_delays_s):
            raise ValueError("retry_delays_s must be positive")
        return self

    @classmethod
    def load(cls, environ: dict[str, str] | None = None, **overrides: Any) -> "Settings":
        """Build settings from the TOML file, secret files and the environment.

        Raises
        ------
        ConfigError
            A value does not validate, a file cannot be read, or a secret is in the TOML file.
        """
        env = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        if config := env.get("MUSEDRP_CONFIG"):
            try:
                values = tomllib.loads(Path(config).read_text())
            except (OSError, tomllib.TOMLDecodeError) as err:
                raise ConfigError(f"MUSEDRP_CONFIG={config}: {err}") from err
            if leaked := [k for k in SECRETS if k in values]:
                raise ConfigError(f"MUSEDRP_CONFIG={config} holds {', '.join(leaked)}: secrets "
                                  "come from the environment or a *_FILE only")
        for name in SECRETS:
            if path := env.get(f"MUSEDRP_{name.upper()}_FILE"):
                try:
                    values[name] = Path(path).read_text().strip()
                except OSError as err:
                    raise ConfigError(f"MUSEDRP_{name.upper()}_FILE: {err}") from err
        for key, value in env.items():
            name = key.removeprefix("MUSEDRP_").lower()
            if key.startswith("MUSEDRP_") and name in cls.model_fields:
                values[name] = value
        values.update(overrides)
        try:
            return cls.model_validate(_parse_tuples(values))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise ConfigError(f"setting MUSEDRP_{where.upper()}: {first['msg']}") from err

    def public(self) -> dict[str, Any]:
        """Settings for logs and ``status``: secrets masked."""
        return self.model_dump(mode="json")


def write_private(path: Path, text: str) -> None:
    """``text`` into ``path`` (a secret, or what names one), readable by this user only, at
    no moment by anyone else, also when the file existed with a wider mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)
        f.write(text)


def _parse_tuples(values: dict[str, Any]) -> dict[str, Any]:
    """``"30,120"`` from the environment -> ``(30, 120)``."""
    out = dict(values)
    for name, field in Settings.model_fields.items():
        if isinstance(out.get(name), str) and "tuple" in str(field.annotation):
            out[name] = tuple(x.strip() for x in out[name].split(",") if x.strip())
    return out
