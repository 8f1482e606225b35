"""ServeConfig is the one declaration of the serving options: the `serve` flags derive from it."""
from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from lckv_service.errors import ConfigError
from lckv_service.server.service import ServeConfig


def _parse(argv, monkeypatch=None, **env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    ap = argparse.ArgumentParser()
    ServeConfig.add_arguments(ap)
    return ServeConfig.from_args(ap.parse_args(argv), secret="s")


def test_every_option_but_the_secret_is_a_flag_with_its_default(monkeypatch):
    for name in ("MODEL_DIR", "PORT", "LCKV_DECODE", "MODEL_ID", "LCKV_ENGINE_PROCESS"):
        monkeypatch.delenv(name, raising=False)
    cfg = _parse([])
    for f in fields(ServeConfig):
        if f.name != "secret":
            assert getattr(cfg, f.name) == f.default, f.name
    ap = argparse.ArgumentParser()
    ServeConfig.add_arguments(ap)
    flags = {a.dest for a in ap._actions if a.option_strings}
    assert flags == {f.name for f in fields(ServeConfig)} - {"secret"} | {"help"}


def test_flags_and_env_reach_the_config(monkeypatch):
    cfg = _parse(["--prefill-mode", "tokenwise", "--decode-graphs", "off", "--max-batched-tokens", "64",
                  "--window", "100"], monkeypatch, PORT="9001", MODEL_ID="m1")
    assert (cfg.prefill_mode, cfg.decode_graphs, cfg.max_batched_tokens, cfg.window) == ("tokenwise", "off", 64, 100)
    assert cfg.port == 9001 and cfg.model_id == "m1"


def test_bad_values_are_refused_naming_the_option(monkeypatch):
    with pytest.raises(ConfigError) as e:
        _parse([], monkeypatch, PORT="eighty")
    assert e.value.param == "PORT" and "integer" in str(e.value)
    monkeypatch.delenv("PORT")
    with pytest.raises(SystemExit):               # argparse: a value outside the declared choices
        _parse(["--prefill-mode", "fastest"])
    for kw, param in ((dict(prefill_mode="fastest"), "prefill_mode"), (dict(decode_graphs="yes"), "decode_graphs"),
                      (dict(max_batched_tokens=0), "max_batched_tokens"), (dict(window=0), "window"),
                      (dict(engine_process="maybe"), "engine_process"), (dict(listen_backlog=0), "listen_backlog")):
        with pytest.raises(ConfigError) as e:
            ServeConfig(model="m", secret="s", **kw)
        assert e.value.param == param
    with pytest.raises(ConfigError) as e:         # an env value outside the choices: argparse does not check it
        _parse([], monkeypatch, LCKV_ENGINE_PROCESS="maybe")
    assert e.value.param == "engine_process"


def test_serve_refuses_a_bad_env_value_with_a_message(monkeypatch, capsys):
    from lckv_service.__main__ import serve
    monkeypatch.setenv("PORT", "eighty")
    assert serve([]) == 2
    assert "PORT" in capsys.readouterr().err


def test_a_replica_whose_model_fails_to_load_exits_with_a_failure_code(tmp_path):
    """The real `serve` process over a model folder with corrupt weights: it logs the failure and
    exits non-zero, so a platform (or an operator's supervisor) sees a failed replica, not a clean stop."""
    import os
    import shutil
    import socket
    import subprocess
    import sys

    from service_fixtures import model_folder
    folder = model_folder(tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}" + b"\0" * 64)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, GPU_SERVICE_SECRET="s" * 32)
    r = subprocess.run([sys.executable, "-m", "lckv_service", "serve", "--model", str(folder), "--device", "cpu",
                        "--host", "127.0.0.1", "--port", str(port)], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "model load failed" in r.stderr and "s" * 32 not in r.stderr
    shutil.rmtree(folder)


def test_a_pool_that_leaves_too_little_memory_to_capture_the_graphs_shrinks(tmp_path, monkeypatch, caplog):
    """Capturing the decode graphs runs out of device memory once (injected: this machine has no GPU):
    the service rebuilds its K/V pool 20% smaller and comes up, saying so; out of memory every time, it
    refuses to start with a ConfigError naming mem_fraction."""
    import torch

    from lckv_service.engine.runner import ModelRunner
    from lckv_service.server.service import ModelService
    from service_fixtures import model_folder, serve_config
    folder = model_folder(tmp_path)
    calls = []
    warm = ModelRunner.warm_graphs

    def fails_first(self):
        calls.append(self.num_slots)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return warm(self)
    monkeypatch.setattr(ModelRunner, "warm_graphs", fails_first)
    with caplog.at_level("WARNING"):
        svc = ModelService(serve_config(folder, max_slots=10, engine_process="off"))
    assert calls == [10, 8] and svc.sched_cfg.num_slots == 8 and svc.engine.runner.num_slots == 8
    assert "retrying with 8 slots" in caplog.text

    def always(self):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")
    monkeypatch.setattr(ModelRunner, "warm_graphs", always)
    with pytest.raises(ConfigError) as e:
        ModelService(serve_config(folder, max_slots=10, engine_process="off"))
    assert e.value.param == "mem_fraction" and "--mem-fraction" in str(e.value)


def test_the_pool_is_sized_around_the_decode_graphs_memory(monkeypatch):
    """plan_slots on CUDA (mem_get_info stubbed: this machine has no GPU): the pool takes mem_fraction of
    the free memory left after the decode graphs' measured bytes, and a reserve that leaves no room for
    one slot is a ConfigError naming the window."""
    import torch

    from lckv_service.cache import KVCache
    from lckv_service.config import ModelConfig
    from lckv_service.engine.runner import plan_slots
    cfg, cap = ModelConfig.preset("tiny-test"), 64
    per_slot = KVCache.bytes_for(cfg, 1, cap, torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000 * per_slot, 2000 * per_slot))
    cuda = torch.device("cuda")
    assert plan_slots(cfg, cap, cuda, torch.bfloat16, 10**6, 0.5) == 500
    assert plan_slots(cfg, cap, cuda, torch.bfloat16, 10**6, 0.5, reserve=200 * per_slot) == 400
    assert plan_slots(cfg, cap, cuda, torch.bfloat16, 300, 0.5, reserve=200 * per_slot) == 300
    with pytest.raises(ConfigError) as e:
        plan_slots(cfg, cap, cuda, torch.bfloat16, 10**6, 0.5, reserve=1000 * per_slot)
    assert e.value.param == "window" and "decode graphs" in str(e.value)


def test_decode_graphs_on_a_cpu_device_is_refused_naming_the_option(tmp_path):
    from lckv_service.server.service import ModelService
    from service_fixtures import model_folder, serve_config
    with pytest.raises(ConfigError) as e:
        ModelService(serve_config(model_folder(tmp_path), device="cpu", decode_graphs="on", engine_process="off"))
    assert e.value.param == "decode_graphs"


def _handshakes_while_stopped(proc, port: int, n: int) -> int:
    """Connects n clients to a SIGSTOPped server: the kernel completes a handshake only while the listen
    socket's accept queue has room (backlog + 1), and drops the SYNs beyond it (the client then retries
    after 1 s: a burst's stragglers). Returns the connections established."""
    import select
    import signal
    import socket
    import time

    socks = []
    proc.send_signal(signal.SIGSTOP)
    try:
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            socks.append(s)
        deadline = time.monotonic() + 0.5     # well under the 1 s SYN retransmit: no second chance
        while time.monotonic() < deadline:
            select.select([], socks, [], 0.05)
        return sum(1 for s in socks if select.select([], [s], [], 0)[1]
                   and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)
    finally:
        for s in socks:
            s.close()
        proc.send_signal(signal.SIGCONT)


@pytest.mark.skipif(__import__("sys").platform != "linux", reason="the accept-queue behaviour is Linux's")
def test_a_burst_of_connections_is_queued_not_dropped(tmp_path):
    """aiohttp's default backlog (128) makes every connect past the 128th in a burst wait a SYN retransmit
    (1 s of TTFT, measured on the GPU runs); the served listen socket queues `listen_backlog` of them."""
    from service_fixtures import model_folder, serve_process, serve_ready, wait_until
    folder = model_folder(tmp_path)
    for flags, expect in ((("--listen-backlog", "4"), lambda n: n <= 5), ((), lambda n: n == 300)):
        proc, port = serve_process(folder, *flags)
        try:
            wait_until(lambda: serve_ready(port) or proc.poll() is not None, 120)
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            got = _handshakes_while_stopped(proc, port, 300)
            assert expect(got), (flags, got)
        finally:
            proc.kill()
            proc.wait(timeout=30)


def test_a_backlog_the_kernel_caps_is_named_in_a_warning(tmp_path):
    from lckv_service.__main__ import check_listen_backlog
    cap = tmp_path / "somaxconn"
    cap.write_text("128\n")
    msg = check_listen_backlog(4096, str(cap))
    assert "--listen-backlog 4096" in msg and "somaxconn = 128" in msg
    cap.write_text("4096\n")
    assert check_listen_backlog(4096, str(cap)) is None
    assert check_listen_backlog(4096, str(tmp_path / "absent")) is None   # not Linux: nothing to say
