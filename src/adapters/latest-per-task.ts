/**
 * Each task's latest operation in flight, as a promise that never rejects. An entry leaves once its
 * operation settles, unless a later one has taken its place, so the map holds only what is running.
 * FsStore queues a task's file operations behind it; the registry waits on it for an announced
 * adapter's load.
 */
export class LatestPerTask<T> {
  private readonly latest = new Map<string, Promise<T>>();

  get(task: string): Promise<T> | undefined {
    return this.latest.get(task);
  }

  /** Notes `settled`, which must not reject, as the task's latest operation. */
  set(task: string, settled: Promise<T>): void {
    this.latest.set(task, settled);
    void settled.then(() => this.latest.get(task) === settled && this.latest.delete(task));
  }
}
