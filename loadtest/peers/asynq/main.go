// asynq-peer: the asynq side of the benchmarks in docs/benchmarks.md.
//
// It measures asynq (github.com/hibiken/asynq, the queue the design notes chose) on the stack's
// Redis, in its own database, with the same task count, payload size and concurrency as the
// dispatch figure it stands next to. Three modes:
//
//	enqueue  N unary Enqueue calls from W goroutines; tasks/s of the calls
//	drain    N tasks enqueued first (not timed), then a server with C workers runs a no-op
//	         handler until all N ran; tasks/s of the drain
//	both     a server with C workers runs while W goroutines enqueue N; tasks/s from the first
//	         enqueue to the last task run (the end-to-end figure)
//
// One JSON object per run goes to stdout. Durability differs: asynq answers Enqueue once the
// task is in Redis memory (no fsync unless Redis runs with appendfsync always); dispatch answers
// SubmitTask after Kafka acks=all and commits task state to MySQL.
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

type report struct {
	Peer        string  `json:"peer"`
	Mode        string  `json:"mode"`
	Tasks       int64   `json:"tasks"`
	PayloadB    int     `json:"payload_bytes"`
	Workers     int     `json:"enqueue_workers"`
	Concurrency int     `json:"concurrency"`
	TaskIDs     bool    `json:"task_ids"`
	Seconds     float64 `json:"seconds"`
	TasksPerS   float64 `json:"tasks_per_s"`
	Errors      int64   `json:"enqueue_errors"`
	// Busy CPU seconds of the whole machine (every process and the kernel, /proc/stat) over the
	// timed phase only; 0 where /proc/stat cannot be read.
	MachineCPU float64 `json:"machine_cpu_s"`
}

// machineCPU is the machine's busy CPU time so far in seconds (USER_HZ ticks of /proc/stat's
// first line, less idle and iowait).
func machineCPU() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line := strings.SplitN(string(b), "\n", 2)[0]
	var busy, total float64
	for i, f := range strings.Fields(line)[1:] {
		v, err := strconv.ParseFloat(f, 64)
		if err != nil || i >= 8 {
			break
		}
		total += v
		if i == 3 || i == 4 {
			busy -= v
		}
	}
	busy += total
	return busy / 100
}

func main() {
	mode := flag.String("mode", "both", "enqueue | drain | both")
	addr := flag.String("redis", "127.0.0.1:6379", "Redis address")
	db := flag.Int("db", 9, "Redis database (flushed before the run; never the stack's 0)")
	n := flag.Int64("n", 100000, "tasks")
	size := flag.Int("size", 300, "payload bytes")
	workers := flag.Int("workers", 64, "enqueue goroutines")
	concurrency := flag.Int("concurrency", 64, "server workers")
	taskIDs := flag.Bool("task-ids", true, "give every task its own TaskID (asynq then refuses a duplicate id, like an idempotency key)")
	timeout := flag.Duration("timeout", 10*time.Minute, "give up after")
	flag.Parse()

	if *db == 0 {
		fail("refusing -db 0: the run flushes its database")
	}
	if *n <= 0 || *size < 0 || *workers <= 0 || *concurrency <= 0 {
		fail("-n, -workers and -concurrency must be positive and -size not negative")
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	rdb := redis.NewClient(&redis.Options{Addr: *addr, DB: *db})
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		fail("flush redis db %d at %s: %v", *db, *addr, err)
	}
	_ = rdb.Close()

	opt := asynq.RedisClientOpt{Addr: *addr, DB: *db, PoolSize: *workers + 8}
	payload := make([]byte, *size)
	_, _ = rand.Read(payload)
	var done atomic.Int64
	finished := make(chan struct{})
	handler := asynq.HandlerFunc(func(context.Context, *asynq.Task) error {
		if done.Add(1) == *n {
			close(finished)
		}
		return nil
	})
	newServer := func() *asynq.Server {
		return asynq.NewServer(asynq.RedisClientOpt{Addr: *addr, DB: *db, PoolSize: *concurrency + 8}, asynq.Config{
			Concurrency: *concurrency,
			Queues:      map[string]int{"default": 1},
			LogLevel:    asynq.WarnLevel,
		})
	}

	rep := report{Peer: "asynq v0.26.0", Mode: *mode, Tasks: *n, PayloadB: *size, Workers: *workers,
		Concurrency: *concurrency, TaskIDs: *taskIDs}
	var errs atomic.Int64
	enqueue := func() {
		client := asynq.NewClient(opt)
		defer client.Close()
		var next atomic.Int64
		var wg sync.WaitGroup
		for w := 0; w < *workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := next.Add(1)
					if i > *n || ctx.Err() != nil {
						return
					}
					opts := []asynq.Option{asynq.MaxRetry(3)}
					if *taskIDs {
						opts = append(opts, asynq.TaskID(fmt.Sprintf("t-%d", i)))
					}
					if _, err := client.EnqueueContext(ctx, asynq.NewTask("noop", payload), opts...); err != nil {
						if errs.Add(1) == 1 {
							fmt.Fprintln(os.Stderr, "enqueue:", err)
						}
					}
				}
			}()
		}
		wg.Wait()
	}
	waitDone := func(srv *asynq.Server) {
		select {
		case <-finished:
		case <-ctx.Done():
			srv.Shutdown()
			fail("timed out with %d of %d tasks run", done.Load(), *n)
		}
	}

	var start time.Time
	var cpu0 float64
	switch *mode {
	case "enqueue":
		start, cpu0 = time.Now(), machineCPU()
		enqueue()
	case "drain":
		enqueue()
		srv := newServer()
		start, cpu0 = time.Now(), machineCPU()
		if err := srv.Start(handler); err != nil {
			fail("start server: %v", err)
		}
		waitDone(srv)
		srv.Shutdown()
	case "both":
		srv := newServer()
		if err := srv.Start(handler); err != nil {
			fail("start server: %v", err)
		}
		start, cpu0 = time.Now(), machineCPU()
		enqueue()
		waitDone(srv)
		srv.Shutdown()
	default:
		fail("unknown -mode %q (enqueue | drain | both)", *mode)
	}
	rep.Seconds = time.Since(start).Seconds()
	rep.MachineCPU = machineCPU() - cpu0
	rep.TasksPerS = float64(*n) / rep.Seconds
	rep.Errors = errs.Load()
	if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
		fail("write report: %v", err)
	}
	if rep.Errors > 0 {
		os.Exit(1)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "asynq-peer: "+format+"\n", args...)
	os.Exit(2)
}
