#!/usr/bin/env python3
"""check_env_all_tests.py BUILD_DIR — every test that ctest knows in a
sanitizer build runs with the sanitizers' options (LSAN_OPTIONS naming
tests/lsan.supp, the MPI shim preloaded): a test directory added where the
set-up of tests/sanitize/CMakeLists.txt does not reach fails here."""
import json
import subprocess
import sys

build = sys.argv[1]
shown = subprocess.run(["ctest", "--test-dir", build, "--show-only=json-v1"],
                       check=True, capture_output=True, text=True).stdout
missing = []
tests = json.loads(shown)["tests"]
for t in tests:
    mods = []
    for p in t.get("properties", []):
        if p["name"] == "ENVIRONMENT_MODIFICATION":
            mods = p["value"]
    text = ";".join(mods)
    if "lsan.supp" not in text or "LD_PRELOAD=" not in text:
        missing.append(t["name"])
for name in missing:
    print(f"FAIL {name}: no sanitizer options (ENVIRONMENT_MODIFICATION)")
print(f"{len(tests) - len(missing)} of {len(tests)} tests run with the sanitizer options")
sys.exit(1 if missing else 0)
