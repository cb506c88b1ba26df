"""Window-edge overhead of the remote and CPU sources (DCGM scrape, RAPL, estimated).

Run from the repository root: `.venv/bin/python benchmarks/meter_remote_overhead.py`.
Serves a synthetic 8-GPU dcgm-exporter page on loopback and a fake powercap tree; every
figure is software overhead only (no energy is reported). Results: BENCHMARKS.md.
"""

import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from perwatt.meter import Meter
from perwatt.meter.dcgm import DCGMSource
from perwatt.meter.estimated import EstimatedCPUSource
from perwatt.meter.meter import median_edge_overhead_s
from perwatt.meter.prom_text import parse_text
from perwatt.meter.rapl import RAPLSource

FAMILIES = [
    "SM_CLOCK",
    "MEM_CLOCK",
    "MEMORY_TEMP",
    "GPU_TEMP",
    "POWER_USAGE",
    "TOTAL_ENERGY_CONSUMPTION",
    "PCIE_REPLAY_COUNTER",
    "GPU_UTIL",
    "MEM_COPY_UTIL",
    "ENC_UTIL",
    "DEC_UTIL",
    "XID_ERRORS",
    "FB_FREE",
    "FB_USED",
    "NVLINK_BANDWIDTH_TOTAL",
    "VGPU_LICENSE_STATUS",
    "UNCORRECTABLE_REMAPPED_ROWS",
    "CORRECTABLE_REMAPPED_ROWS",
    "ROW_REMAP_FAILURE",
]
FAMILIES = ["DCGM_FI_DEV_" + f for f in FAMILIES] + [
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
    "DCGM_FI_PROF_DRAM_ACTIVE",
]


def page(n_gpus):
    out = []
    for fam in FAMILIES:
        out += [f"# HELP {fam} help text.", f"# TYPE {fam} gauge"]
        for g in range(n_gpus):
            lab = (
                f'gpu="{g}",UUID="GPU-{g:08x}-1111-2222-3333-444455556666",'
                f'pci_bus_id="00000000:{0x18 + g:02X}:00.0",device="nvidia{g}",'
                'modelName="NVIDIA H100 80GB HBM3",Hostname="node1",'
                'DCGM_FI_DRIVER_VERSION="550.54.15"'
            )
            out.append(f"{fam}{{{lab}}} {123456789 + g}")
    return "\n".join(out) + "\n"


BODY = page(8).encode()


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *a):
        pass


srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
srv.daemon_threads = True
threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
url = f"http://127.0.0.1:{srv.server_address[1]}/metrics"
ts = []
for _ in range(200):
    t0 = time.perf_counter()
    parse_text(BODY.decode())
    ts.append(time.perf_counter() - t0)
print(f"parse_text median: {statistics.median(ts) * 1e3:.3f} ms")
tmp = Path(tempfile.mkdtemp())
for d, name in (
    ("intel-rapl:0", "package-0"),
    ("intel-rapl:0:0", "dram"),
    ("intel-rapl:1", "package-1"),
    ("intel-rapl:1:0", "dram"),
):
    p = tmp / d
    p.mkdir()
    (p / "name").write_text(name + "\n")
    (p / "energy_uj").write_text("123456789\n")
    (p / "max_energy_range_uj").write_text("262143328850\n")
for label, s in (
    ("dcgm", DCGMSource(url, reuse_s=0.0)),
    ("rapl", RAPLSource(tmp)),
    ("estimated", EstimatedCPUSource()),
):
    m = Meter(s, sampler=False, sync_cuda=False)
    m.start()
    print(f"{label}: median edge {median_edge_overhead_s(m, repeats=200) * 1e3:.3f} ms")
    m.close()
srv.shutdown()
