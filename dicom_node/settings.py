"""Typed settings: environment variables (DICOM_NODE_*) over a YAML file over defaults.

Validated once at start-up by :func:`load_settings`; a bad value is refused with the field and the
reason. The settings object is passed explicitly; nothing reads the environment at import time.
Nested sections are set from the environment with a double underscore, e.g.
``DICOM_NODE_WORKER__DEVICE=cuda``. The YAML file is config/dicom-node.yaml's format, found
through ``--config`` or ``DICOM_NODE_CONFIG``.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import platformdirs
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from dicom_node.errors import Invalid
from dicom_node.outputs.kinds import OUTPUT_KINDS
from dicom_node.triage.viewer import FIELDS as VIEWER_FIELDS
from dicom_node.validation import AETitle, KeepDays, MaxWaitSeconds, OutputKinds, Port, QuietSeconds

ENV_PREFIX = "DICOM_NODE_"
CONFIG_ENV = "DICOM_NODE_CONFIG"
# The YAML file of the load_settings() call in progress (see there).
_config_file: ContextVar[str | None] = ContextVar("dicom_node_config_file", default=None)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TLSSettings(_Section):
    """TLS for the DICOM listeners. Off unless cert_file and key_file are set."""

    cert_file: Path | None = None
    key_file: Path | None = None
    # When set, clients must present a certificate signed by this CA.
    client_ca_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> "TLSSettings":
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be set together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file needs cert_file and key_file")
        for name in ("cert_file", "key_file", "client_ca_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: {path} is not a readable file")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class ListenerSettings(_Section):
    host: str = "0.0.0.0"
    # Listener processes sharing each port (SO_REUSEPORT): several senders at once use several cores.
    processes: int = Field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)), ge=1, le=64)
    # Below this much free space under the data dir, C-STORE answers 0xA700 (out of resources).
    min_free_disk_mb: int = Field(default=1024, ge=0)
    # Largest PDU we accept (0 = unlimited, then 64 MiB at most); larger PDUs mean fewer round
    # trips per image. A peer that sends a longer one is aborted before it is read.
    max_pdu_bytes: int = Field(default=4 * 1024 * 1024, ge=0)
    # Largest data set accepted (a deflated one: inflated); a longer one is answered 0xA700 and
    # nothing of it is kept. The default takes a 2 GB Enhanced CT.
    max_dataset_bytes: int = Field(default=3 * 1024**3, ge=1024 * 1024)
    # How often listener processes re-read the AE table (adding an AE takes effect this fast).
    reload_seconds: float = Field(default=1.0, gt=0, le=60)
    # Storage SOP classes accepted by every local AE in addition to CT and Enhanced CT.
    extra_sop_classes: list[str] = Field(default_factory=list)
    # An association idle this long is aborted; a PDU must arrive whole within it.
    network_timeout_seconds: float = Field(default=60.0, gt=0)
    # A connection must have negotiated its association this soon (ARTIM, PS3.8 9.1.5).
    association_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    # Connections (negotiated or not) from one remote address, per listener process and local AE
    # (more: A-ASSOCIATE-RJ "local limit exceeded", transient, as for max_associations).
    max_connections_per_address: int = Field(default=32, ge=1)
    # Connections in all, per listener process and local AE (more: the same A-ASSOCIATE-RJ).
    max_connections: int = Field(default=512, ge=1)
    # Negotiated associations, per listener process and local AE (more: A-ASSOCIATE-RJ
    # "local limit exceeded", transient).
    max_associations: int = Field(default=64, ge=1)
    tls: TLSSettings = Field(default_factory=TLSSettings)


class CompletionSettings(_Section):
    """The one definition of the completion defaults: a local AE created without a quiet period or
    a maximum wait (command line, admin pages, ``up``) gets these."""

    default_quiet_seconds: QuietSeconds = 5.0
    # A series still receiving after this long is completed anyway.
    default_max_wait_seconds: MaxWaitSeconds = 1800.0
    poll_seconds: float = Field(default=0.5, gt=0, le=60)


class WorkerSettings(_Section):
    device: Literal["cpu", "cuda", "auto"] = "auto"
    # Worker processes; None: 1 on CPU, one per GPU on CUDA.
    concurrency: int | None = Field(default=None, ge=1, le=64)
    # "solo" runs jobs in the worker process itself; "prefork" in child processes; "auto":
    # solo for one process, prefork for more.
    pool: Literal["auto", "solo", "prefork"] = "auto"
    # Torch CPU threads per worker process; None: the CPU cores divided by the processes.
    torch_threads: int | None = Field(default=None, ge=1, le=256)
    # A weights folder (model.inference.kinds loads it by the kind its metadata names); None: the
    # weights shipped in model/weights (model.inference.weights.weights_folder).
    weights_dir: Path | None = None
    # None: what the weights' metadata chose.
    localisation: Literal["auto", "cam", "cam+ig"] | None = None
    sc_slices: Literal["lung", "key"] = "key"
    # The Parametric Map (output kind pm) is left out of a series of more slices (frames) than
    # this; None: never. OHIF needs the map as one float frame per CT slice at the CT's matrix,
    # which the PACS stores inflated, twice the CT's bytes (dicom_node.outputs.pm.left_out).
    parametric_map_max_slices: int | None = Field(default=600, ge=1)
    # Redis: seconds a job may stay unacknowledged before the broker hands it to another worker.
    visibility_timeout_seconds: int = Field(default=3600, ge=10)
    # A running job's worker writes the job's heartbeat this often; a heartbeat older than three
    # of these means the worker is gone and another delivery may take the job over.
    heartbeat_seconds: float = Field(default=5.0, gt=0, le=300)
    # `serve` requeues a running job whose heartbeat is older than this (a worker killed with a
    # broker that does not redeliver, or Redis before its visibility timeout).
    lost_after_seconds: float = Field(default=120.0, gt=0)

    @field_validator("weights_dir")
    @classmethod
    def _weights(cls, v: Path | None) -> Path | None:
        if v is not None and not (v / "metadata.json").is_file():
            what = "does not exist" if not v.exists() else "has no metadata.json"
            raise ValueError(
                f"{v} {what}: name a weights folder (model.safetensors + metadata.json), or leave it unset for the "
                "shipped weights"
            )
        return v

    @field_validator("parametric_map_max_slices", mode="before")
    @classmethod
    def _max_slices(cls, v: Any) -> Any:
        # true would read as 1 (no map for any series).
        if isinstance(v, bool):
            raise ValueError(f"{v!r} is not a number of slices: a whole number, at least 1, or null for no limit")
        return v

    @model_validator(mode="after")
    def _lost_after(self) -> "WorkerSettings":
        if self.lost_after_seconds < 3 * self.heartbeat_seconds:
            raise ValueError("lost_after_seconds must be at least 3 x heartbeat_seconds")
        return self


class ExportSettings(_Section):
    calling_ae_title: AETitle = "COVIDCTNODE"
    backoff_base_seconds: float = Field(default=10.0, gt=0)
    backoff_cap_seconds: float = Field(default=600.0, gt=0)
    max_age_seconds: float = Field(default=24 * 3600.0, gt=0)
    timeout_seconds: float = Field(default=30.0, gt=0)
    # Outputs for the calling AE and for a destination that names none; default: every kind.
    default_outputs: OutputKinds = Field(default_factory=lambda: list(OUTPUT_KINDS))
    # An export queued or sending without progress for this long is handed to the queue again
    # (its message or its worker was lost).
    stale_after_seconds: float = Field(default=300.0, gt=0)


class NotifySettings(_Section):
    """Notifications of finished jobs (dicom_node.notify): how ``serve`` sends them."""

    # How often serve looks for notifications to send (the delay between a job's end and its
    # notification's departure is at most this).
    poll_seconds: float = Field(default=0.25, gt=0, le=60)
    # A send (connect, message, answer) taking longer fails and is retried.
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # Retries: base, 2 base, 4 base... capped; a notification not delivered this long after the
    # job ended fails for good (with an event and an audit entry).
    backoff_base_seconds: float = Field(default=5.0, gt=0)
    backoff_cap_seconds: float = Field(default=300.0, gt=0)
    max_age_seconds: float = Field(default=24 * 3600.0, gt=0)
    # Notifications sent at once (each to its own endpoint).
    threads: int = Field(default=4, ge=1, le=32)
    # Who the node says it is in HL7 messages (MSH-3 sending application, MSH-4 facility).
    hl7_application: str = Field(default="COVIDCTNODE", min_length=1, max_length=180)
    hl7_facility: str = Field(default="", max_length=180)


class TriageSettings(_Section):
    """The worklist and the monitoring of triage (dicom_node.triage)."""

    # "Open in viewer" on the worklist and in notifications: a URL with {study_uid}, {series_uid},
    # {accession_number}, {patient_id} and {key_sop_uid} (the CT image of the first key slice, the
    # strongest finding; empty without one) in it, e.g. OHIF's
    # http://viewer:3000/viewer?StudyInstanceUIDs={study_uid}&initialSeriesInstanceUID={series_uid}&initialSOPInstanceUID={key_sop_uid}
    # (at that image; at the series' first without a finding); None: no link.
    viewer_url: str | None = None
    # The node's admin pages as people reach them, for links in notifications (None: no link).
    node_url: str | None = None
    # A warning event when the radiologists' agreement with the node over the last
    # agreement_window_days falls below this (with at least agreement_min_verdicts verdicts).
    agreement_warning_below: float = Field(default=0.8, ge=0, le=1)
    agreement_min_verdicts: int = Field(default=10, ge=1)
    agreement_window_days: int = Field(default=7, ge=1, le=365)

    @field_validator("viewer_url", "node_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not an http:// or https:// URL")
        return v

    @field_validator("viewer_url")
    @classmethod
    def _fields(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                v.format(**{name: "1" for name in VIEWER_FIELDS})
            except (KeyError, IndexError, ValueError) as exc:
                names = ", ".join(f"{{{name}}}" for name in VIEWER_FIELDS)
                raise ValueError(f"{v!r}: only {names} may be filled in ({exc})") from None
        return v


class RemoteSettings(_Section):
    """Workers on hosts that do not share the node's disk (dicom_node.pipeline.remote).

    ``token`` on the node opens its internal endpoints (/internal/v1/: stored instances, result
    files); on a worker, with ``node_url``, it lets the worker fetch a series it must analyse and
    hand its results back. A worker with no ``node_url``, or whose data dir turns out to be the
    node's (a shared volume), reads and writes the files in place and fetches nothing."""

    # The node's admin app as the workers reach it, e.g. http://node:8080 (https behind a TLS proxy).
    node_url: str | None = None
    # Shared secret of the node and its workers (at least 16 characters); unset: no internal endpoints.
    # A plain string, as admin.secret_key: the settings travel to the listener processes as JSON.
    token: str | None = None
    timeout_seconds: float = Field(default=60.0, gt=0)
    # CA bundle for an https node_url signed by a private CA; None: the system's.
    ca_file: Path | None = None
    # Instances fetched at once.
    fetch_threads: int = Field(default=4, ge=1, le=32)
    # Result folders a remote worker keeps as a cache for exports (the node keeps them all).
    cached_results: int = Field(default=50, ge=1)

    @field_validator("node_url")
    @classmethod
    def _node_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"{v!r} is not an http:// or https:// URL")
        return v.rstrip("/") if v else v

    @field_validator("token")
    @classmethod
    def _token(cls, v: str | None) -> str | None:
        if v is not None and len(v) < 16:
            raise ValueError("must be at least 16 characters (e.g. `openssl rand -hex 24`)")
        return v

    @model_validator(mode="after")
    def _pair(self) -> "RemoteSettings":
        if self.node_url and self.token is None:
            raise ValueError("node_url needs token (the node's remote.token)")
        if self.ca_file is not None and not Path(self.ca_file).is_file():
            raise ValueError(f"ca_file: {self.ca_file} is not a readable file")
        return self


class RetentionSettings(_Section):
    """What the node keeps, and for how long (dicom_node.storage.retention). A series' images are
    purged only once its analysis and every export of it are finished, never before."""

    # Days a series' images are kept once its analysis and exports are finished (a local AE may keep
    # its own: ae update-local --keep-images-days); None: until the disk needs the room.
    images_days: KeepDays | None = 30.0
    # Days a job's results (the objects sent to PACS, result.json, the maps) are kept after the job
    # finished; None: for ever. The job's row, with its decision, stays.
    results_days: KeepDays | None = 365.0
    # Days event rows (what happened) and audit rows (who changed what) are kept.
    events_days: KeepDays = 90.0
    audit_days: KeepDays = 730.0
    # Disk use (percent of the data dir's file system) above which the images of the oldest finished
    # series are purged, until the use is back under low_water_percent.
    high_water_percent: float = Field(default=85.0, gt=0, lt=100)
    low_water_percent: float = Field(default=75.0, gt=0, lt=100)
    # How often serve applies the policy (seconds); the listeners make room themselves when a
    # C-STORE would take the disk under listener.min_free_disk_mb.
    check_seconds: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _water(self) -> "RetentionSettings":
        if self.low_water_percent >= self.high_water_percent:
            raise ValueError("low_water_percent must be below high_water_percent")
        return self


class DicomWebSettings(_Section):
    """STOW-RS input (POST /dicomweb/<local AE>/studies on the admin app, dicom_node.admin.dicomweb)."""

    # Largest request body taken (its instances together); a longer one is answered 413 and the
    # instance being read then is discarded. Each instance is also held to listener.max_dataset_bytes.
    max_request_bytes: int = Field(default=4 * 1024**3, ge=1024 * 1024)


class AdminSettings(_Section):
    host: str = "127.0.0.1"
    # Secret for session cookies and CSRF tokens; generated and kept under the data dir if unset.
    secret_key: str | None = None
    session_hours: float = Field(default=12.0, gt=0)
    # Mark the session cookie Secure: set it when the pages are served over HTTPS (TLS proxy).
    secure_cookies: bool = False


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("dicom-node", appauthor=False))


class Settings(BaseSettings):
    """All settings of the node. See config/dicom-node.yaml for the documented file form."""

    # "null" in the environment is None, as in the YAML file (an optional setting's "no limit").
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", env_parse_none_str="null"
    )

    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str | None = None  # default: SQLite file under data_dir
    broker_url: str | None = None  # default: a SQLite-file broker under data_dir (no server needed)
    admin_port: Port = 8080
    # module:Class implementing dicom_node.jobs.outbox.Dispatcher; the worker package's Celery one.
    dispatcher: str = "worker.dispatch:CeleryDispatcher"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # text: lines for people; json: one JSON object per line, for log collectors (dicom_node.logs).
    log_format: Literal["text", "json"] = "text"
    # serve renames logs/dicom-node.log to .1 once it passes this size, keeping log_keep_files of them.
    log_max_mb: int = Field(default=100, ge=1)
    log_keep_files: int = Field(default=5, ge=1, le=100)
    listener: ListenerSettings = Field(default_factory=ListenerSettings)
    completion: CompletionSettings = Field(default_factory=CompletionSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    dicomweb: DicomWebSettings = Field(default_factory=DicomWebSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    remote: RemoteSettings = Field(default_factory=RemoteSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    triage: TriageSettings = Field(default_factory=TriageSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_file = _config_file.get() or os.environ.get(CONFIG_ENV)
        if yaml_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)

    @field_validator("database_url", "broker_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and "://" not in v:
            raise ValueError(f"{v!r} is not a URL (scheme://...)")
        return v

    @property
    def effective_database_url(self) -> str:
        """database_url, or the SQLite file under data_dir (the node makes its data dir; a
        database_url's own folder must exist: dicom_node.db.engine.check_url)."""
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.data_dir / 'dicom-node.sqlite3'}"

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.data_dir / 'broker.sqlite3'}"

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "storage"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"


class SettingsError(Invalid):
    """Settings could not be loaded; the message names each bad field and why, one a line."""

    def one_line(self) -> str:
        return "invalid settings: " + "; ".join(str(self).splitlines())


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Load and validate settings once. Raises SettingsError naming every bad field."""
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise SettingsError(f"config file {path} does not exist")
    else:
        env_file = os.environ.get(CONFIG_ENV)
        if env_file and not Path(env_file).is_file():
            raise SettingsError(f"{CONFIG_ENV}={env_file}: file does not exist")
    # The file applies to this call only (no process-wide state: a later load_settings() in the
    # same process reads its own arguments and the environment). The command line exports
    # DICOM_NODE_CONFIG itself so that the processes it starts read the same file.
    token = _config_file.set(str(config_file) if config_file is not None else None)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"setting {field}: {msg}")
        raise SettingsError("\n".join(lines)) from None
    except yaml.YAMLError as exc:  # the file is not YAML: where, and what the parser expected
        mark = getattr(exc, "problem_mark", None)
        where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark else "the config file"
        problem = getattr(exc, "problem", None) or str(exc)
        raise SettingsError(f"{where}: not valid YAML ({problem})") from None
    finally:
        _config_file.reset(token)
