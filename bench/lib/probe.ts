// Preloaded (`node --import bench/lib/probe.ts`) into every process a
// benchmark starts, the Muster server included, so each figure can say what
// each process cost: CPU seconds, peak RSS and event-loop delay. The parent
// asks over the IPC channel ({ type: "__probe" }); the probe answers and
// otherwise stays out of the way (the channel is unref'd, no timer is kept).

import { monitorEventLoopDelay } from "node:perf_hooks";

export interface ProbeReading {
  pid: number;
  /** CPU seconds (user + system) since start or the last reset. */
  cpuS: number;
  /** Of cpuS, the part spent in the kernel (socket writes on loopback count here). */
  cpuSystemS: number;
  /** Peak resident set since the process started, bytes. */
  peakRssBytes: number;
  rssBytes: number;
  heapUsedBytes: number;
  /** Event-loop delay since start or the last reset, ms. */
  eldP50Ms: number;
  eldP99Ms: number;
  eldMaxMs: number;
}

interface ProbeRequest {
  type: "__probe";
  id: number;
  reset?: boolean;
  gc?: boolean;
}

if (typeof process.send === "function") {
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  let cpuBase = process.cpuUsage();

  process.on("message", (message: ProbeRequest) => {
    if (message?.type !== "__probe") return;
    const gc = (globalThis as { gc?: () => void }).gc;
    if (message.gc && gc) {
      gc();
      gc();
    }
    const cpu = process.cpuUsage(cpuBase);
    const reading: ProbeReading = {
      pid: process.pid,
      cpuS: (cpu.user + cpu.system) / 1e6,
      cpuSystemS: cpu.system / 1e6,
      peakRssBytes: process.resourceUsage().maxRSS * 1024,
      rssBytes: process.memoryUsage.rss(),
      heapUsedBytes: process.memoryUsage().heapUsed,
      eldP50Ms: delay.count > 0 ? delay.percentile(50) / 1e6 : 0,
      eldP99Ms: delay.count > 0 ? delay.percentile(99) / 1e6 : 0,
      eldMaxMs: delay.count > 0 ? delay.max / 1e6 : 0,
    };
    if (message.reset) {
      cpuBase = process.cpuUsage();
      delay.reset();
    }
    process.send?.({ type: "__probe_reply", id: message.id, reading });
  });
  process.channel?.unref();
}
