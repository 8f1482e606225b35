// Keeps one process of the local stack running: restarts it with backoff when it exits or stops
// answering its health URL (a frozen process is killed first), and gives up when a restart budget
// is spent. Used by `npm start` for each GPU-service replica and the Worker.

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export class Supervisor {
  /**
   * @param {object} o
   * @param {string} o.name                 shown in log lines
   * @param {() => Promise<import("node:child_process").ChildProcess>} o.start  resolves once healthy
   * @param {string} o.healthUrl            polled while the process runs
   * @param {(child, signal?) => Promise<void>} o.stop
   * @param {(msg: string) => void} o.log
   * @param {number} [o.maxRestarts]        at most this many restarts ...
   * @param {number} [o.windowMs]           ... within this window, else give up
   */
  constructor({ name, start, healthUrl, stop, log, maxRestarts = 5, windowMs = 600_000, checkEveryMs = 2_000,
    checkTimeoutMs = 2_000, failedChecks = 3, backoffMs = 1_000, maxBackoffMs = 30_000 }) {
    Object.assign(this, { name, start, healthUrl, stopChild: stop, log, maxRestarts, windowMs, checkEveryMs,
      checkTimeoutMs, failedChecks, backoffMs, maxBackoffMs });
    this.child = null;
    this.stopped = false;
    this.restarts = []; // times of recent restarts
    this.done = new Promise((resolve) => (this.finish = resolve)); // resolves with the reason it gave up
  }

  /** The first start: a failure here is the caller's (nothing to restart yet). */
  async launch() {
    this.child = await this.start();
    this.log(`${this.name} is up (pid ${this.child.pid})`);
    this.watch(this.child);
    return this.child;
  }

  async stop() {
    this.stopped = true;
    clearInterval(this.timer);
    await this.stopChild(this.child);
  }

  watch(child) {
    let failures = 0;
    let checking = false;
    const onExit = (code, signal) => {
      clearInterval(this.timer);
      if (!this.stopped) void this.recover(`exited (${signal ?? `code ${code}`})`);
    };
    child.once("exit", onExit);
    this.timer = setInterval(async () => {
      if (checking || this.stopped) return;
      checking = true;
      const ok = await fetch(this.healthUrl, { signal: AbortSignal.timeout(this.checkTimeoutMs) }).then((r) => r.ok, () => false);
      checking = false;
      failures = ok ? 0 : failures + 1;
      if (failures >= this.failedChecks && !this.stopped) {
        clearInterval(this.timer);
        child.off("exit", onExit);
        this.log(`${this.name} is unhealthy (${this.healthUrl} failed ${failures} checks in a row); killing it`);
        await this.stopChild(child, "SIGKILL");
        void this.recover("was unhealthy");
      }
    }, this.checkEveryMs);
  }

  async recover(why) {
    for (;;) {
      const now = Date.now();
      this.restarts = this.restarts.filter((t) => now - t < this.windowMs);
      if (this.restarts.length >= this.maxRestarts) {
        const reason = `${this.name} ${why}; restart budget spent (${this.maxRestarts} restarts in ${this.windowMs / 60_000} min)`;
        this.log(reason);
        this.finish(reason);
        return;
      }
      const delay = Math.min(this.maxBackoffMs, this.backoffMs * 2 ** this.restarts.length);
      this.restarts.push(now);
      this.log(`${this.name} ${why}; restarting in ${delay / 1000}s (restart ${this.restarts.length} of ${this.maxRestarts} allowed in ${this.windowMs / 60_000} min)`);
      await sleep(delay);
      if (this.stopped) return;
      const t0 = Date.now();
      try {
        this.child = await this.start();
      } catch (e) {
        why = `failed to restart (${e.message})`;
        continue;
      }
      if (this.stopped) return void (await this.stopChild(this.child));
      this.log(`${this.name} is back (pid ${this.child.pid}, healthy after ${((Date.now() - t0) / 1000).toFixed(1)}s)`);
      this.watch(this.child);
      return;
    }
  }
}
