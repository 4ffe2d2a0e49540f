# Writes a minimal pure-Python wheel: make_wheel.py OUT_DIR NAME VERSION VALUE
# (the package's __init__ sets VALUE). Used by hermetic BuildEnvs tests.
import base64, hashlib, os, sys, zipfile
out, name, ver, value = sys.argv[1:5]
dist = f"{name}-{ver}.dist-info"
files = {
    f"{name}/__init__.py": f"VALUE = {value}\n",
    f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n",
    f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(os.path.join(out, f"{name}-{ver}-py3-none-any.whl"), "w") as z:
    for path, text in files.items():
        data = text.encode()
        z.writestr(path, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    z.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
