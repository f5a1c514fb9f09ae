"""Run `parquant ARGS...` in this process, then print its peak RSS (VmHWM) in bytes to stderr's last line.

VmHWM belongs to this process's own address space, so unlike wait4's ru_maxrss it does not
inherit the parent's high-water mark across fork/exec.
"""

import sys

from parquant_cli.main import main

code = main(sys.argv[1:])
with open("/proc/self/status") as status:
    peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(f"peak_rss_bytes={peak_kib * 1024}", file=sys.stderr)
sys.exit(code)
