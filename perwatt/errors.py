"""perwatt's exceptions, one tree for the whole package.

Vendor errors (NVML return codes, HTTP failures, OS errors from sysfs) are mapped once, at the
backend boundary, into this tree and raised ``from`` the original so the cause is never lost.
The CLI prints ``UserError`` subclasses as one line and exits non-zero without a traceback.

    PerwattError
    ├── UserError                      bad input the user can fix; CLI: one line, exit 2
    │   ├── ConfigError                invalid argument, flag combination or spec string
    │   ├── DataFormatError            malformed file (trace, profile, workload, result)
    │   └── UnknownDeviceError         a device index or name that does not exist
    ├── SourceUnavailableError         a power source is absent on this machine (no GPU, no RAPL)
    │   ├── NVMLNotFoundError          libnvidia-ml cannot be loaded
    │   └── RAPLUnavailableError       powercap absent or unreadable
    ├── DeviceError                    a device answered with an error
    │   ├── NotSupportedError          this GPU/driver does not support the query
    │   ├── NoPermissionError          needs root or a capability (e.g. setting clocks)
    │   └── DeviceLostError            the GPU fell off the bus / was reset
    ├── RemoteSourceError              an exporter or Prometheus server is down or returned garbage
    └── PartialRunError                a run stopped early; what was measured is kept, marked partial
"""

from __future__ import annotations

from collections.abc import Mapping


class PerwattError(Exception):
    """Base of every error perwatt raises on purpose."""


class UserError(PerwattError):
    """Bad input the user can fix. The CLI prints the message alone and exits 2."""


class ConfigError(UserError):
    """An invalid argument, flag combination or spec string."""


class FieldError(ConfigError):
    """A bad value of a named field of a config object (``PipelineSpec.stages`` …).

    The message names the library's fields (``stages must be a whole number ≥ 1, got 0``); a
    front end that calls them something else (the CLI's ``--stages``) says its own names with
    :meth:`naming`, so the library never speaks in flags and the CLI never speaks in fields.
    """

    def __init__(self, template: str, **fields: str) -> None:
        #: ``template`` with ``{key}`` placeholders, each standing for field ``fields[key]``
        self.template = template
        self.fields = fields
        super().__init__(template.format(**fields))

    def naming(self, names: Mapping[str, str]) -> str:
        """The message with each field called by ``names[field]`` (unlisted: the field name)."""
        return self.template.format(**{k: names.get(v, v) for k, v in self.fields.items()})


class DataFormatError(UserError):
    """A malformed input file; the message names the file and, where known, the line."""


class UnknownDeviceError(UserError):
    """A device index or name that does not exist on this machine."""


class SourceUnavailableError(PerwattError):
    """A power source is not present on this machine."""


class NVMLNotFoundError(SourceUnavailableError):
    """libnvidia-ml.so could not be loaded: no NVIDIA driver on this machine."""


class RAPLUnavailableError(SourceUnavailableError):
    """Linux powercap (RAPL) is absent or unreadable."""


class DeviceError(PerwattError):
    """A device answered a query with an error."""


class NotSupportedError(DeviceError):
    """The device or driver does not support this query."""


class NoPermissionError(DeviceError):
    """The operation needs privileges perwatt does not have."""


class DeviceLostError(DeviceError):
    """The device is gone (fell off the bus, reset, or driver unloaded)."""


class RemoteSourceError(PerwattError):
    """A remote telemetry endpoint (dcgm-exporter, Prometheus) failed or returned garbage."""


class PartialRunError(PerwattError):
    """A run stopped before the end; its results so far were kept and marked partial."""


# Errors the CLI reports as a single line (exit code != 0, no traceback): the user can act on
# each of them from the message alone.
CLEAN_EXIT_ERRORS: tuple[type[PerwattError], ...] = (
    UserError,
    SourceUnavailableError,
    DeviceError,
    RemoteSourceError,
    PartialRunError,
)
