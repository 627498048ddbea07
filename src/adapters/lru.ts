/** A least-recently-used map bounded by the summed cost of its values. */
export class LruCache<K, V> {
  private readonly map = new Map<K, { value: V; cost: number }>();
  private used = 0;
  hits = 0;
  misses = 0;
  evictions = 0;

  constructor(private readonly budget: number) {}

  get(key: K): V | undefined {
    const hit = this.map.get(key);
    if (!hit) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    this.map.delete(key);
    this.map.set(key, hit);
    return hit.value;
  }

  set(key: K, value: V, cost: number): void {
    this.delete(key);
    this.map.set(key, { value, cost });
    this.used += cost;
    // The newest entry always stays, even alone over budget: it is about to be used.
    for (const [k, v] of this.map) {
      if (this.used <= this.budget || k === key) break;
      this.map.delete(k);
      this.used -= v.cost;
      this.evictions++;
    }
  }

  delete(key: K): void {
    const old = this.map.get(key);
    if (old) {
      this.map.delete(key);
      this.used -= old.cost;
    }
  }

  get size(): number {
    return this.map.size;
  }

  get bytes(): number {
    return this.used;
  }
}
