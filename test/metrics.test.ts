import t from 'tap';
import { Metrics } from '../src/metrics.js';

const sources = (cache: { hits: number; misses: number; evictions: number; bytes: number }) => ({ queueDepth: () => 0, running: () => 0, adapters: () => 0, cache: () => cache });
const scrape = async (m: Metrics) => m.registry.metrics();
const value = (text: string, name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);

t.test('adapter cache hits, misses and evictions are counters with the running totals', async (t) => {
  const cache = { hits: 3, misses: 2, evictions: 0, bytes: 4096 };
  const m = new Metrics(4, sources(cache));
  t.teardown(() => m.close());
  let text = await scrape(m);
  for (const name of ['sps_adapter_cache_hits_total', 'sps_adapter_cache_misses_total', 'sps_adapter_cache_evictions_total']) t.match(text, new RegExp(`^# TYPE ${name} counter$`, 'm'), name);
  t.match(text, /^# TYPE sps_adapter_cache_bytes gauge$/m);
  t.equal(value(text, 'sps_adapter_cache_hits_total'), 3);
  t.equal(value(text, 'sps_adapter_cache_misses_total'), 2);
  t.equal(value(text, 'sps_adapter_cache_bytes'), 4096);
  Object.assign(cache, { hits: 10, evictions: 1, bytes: 0 });
  text = await scrape(m);
  t.equal(value(text, 'sps_adapter_cache_hits_total'), 10);
  t.equal(value(text, 'sps_adapter_cache_evictions_total'), 1);
  t.equal(value(text, 'sps_adapter_cache_bytes'), 0);
  t.equal(value(await scrape(m), 'sps_adapter_cache_hits_total'), 10, 'a scrape does not change a counter');
});

t.test('the event-loop delay p99 covers a window, whatever scrapes it: a second scraper reads the same value', async (t) => {
  // A window far longer than the test: the test ends windows itself (roll), so nothing depends on timing.
  const m = new Metrics(4, sources({ hits: 0, misses: 0, evictions: 0, bytes: 0 }), 3_600_000);
  t.teardown(() => m.close());
  await new Promise((r) => setTimeout(r, 50));
  const until = performance.now() + 200;
  while (performance.now() < until); // the event loop blocked for 200 ms
  await new Promise((r) => setTimeout(r, 30)); // the monitor records the delay
  t.ok(value(await scrape(m), 'sps_event_loop_delay_p99_ms') >= 150, 'before any window ended: the current one');
  m.loop.roll();
  const first = value(await scrape(m), 'sps_event_loop_delay_p99_ms');
  const second = value(await scrape(m), 'sps_event_loop_delay_p99_ms');
  t.ok(first >= 150, `the window's p99 shows the block (${first} ms)`);
  t.equal(second, first, 'a scrape does not reset it');
  await new Promise((r) => setTimeout(r, 100));
  m.loop.roll();
  t.ok(value(await scrape(m), 'sps_event_loop_delay_p99_ms') < 150, 'the next window, without the block, does not show it');
});
