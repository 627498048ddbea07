const IDLE = 0;
const RUNNING = 1;
const CLOSED = 2;

/**
 * Whether a worker's thread is inside onnxruntime-node's session.run, in memory the main thread
 * shares. session.run is synchronous native work on the worker's own JS thread (onnxruntime-node
 * calls it from a setImmediate), and terminating a worker during one aborts the whole process when
 * the run returns (`terminate called after throwing an instance of 'Napi::Error'`). So the main
 * thread terminates a worker only once it has closed the gate: no run in progress, and none can
 * start after. A worker stuck in JavaScript holds no run, so it is closed, and terminated, at once.
 */
export class RunGate {
  /** [0]: IDLE, RUNNING or CLOSED; [1]: 1 once the main thread asked to close (no run may start). */
  readonly state: Int32Array;

  constructor(shared?: SharedArrayBuffer) {
    this.state = new Int32Array(shared ?? new SharedArrayBuffer(8));
  }

  get buffer(): SharedArrayBuffer {
    return this.state.buffer as SharedArrayBuffer;
  }

  /** Worker, before session.run: throws once the main thread has asked to close. */
  enter(): void {
    if (Atomics.load(this.state, 1) === 1 || Atomics.compareExchange(this.state, 0, IDLE, RUNNING) !== IDLE) throw new Error('this inference worker was abandoned: it starts no more runs');
  }

  /** Worker, once session.run has returned. */
  leave(): void {
    Atomics.compareExchange(this.state, 0, RUNNING, IDLE);
  }

  /**
   * Main thread: no run may start from now on; true once none is in progress either (terminating
   * the worker is then safe). Call it again until it is true.
   */
  close(): boolean {
    Atomics.store(this.state, 1, 1);
    return Atomics.compareExchange(this.state, 0, IDLE, CLOSED) !== RUNNING;
  }
}
