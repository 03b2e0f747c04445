// franzclient: a franz-go (kgo) driver for the client-matrix system tests
// (broker/tests/system/test_client_matrix.py).
//
// Reads one JSON request on stdin, prints one JSON result on stdout (exit 0), or
// {"error": "..."} (exit 1). The request/response shapes are shared with the kafkajs and Java
// drivers (see clients/README.md); bytes are base64, null stays null:
//
//	{"op": "produce", "bootstrap": "127.0.0.1:9092", "topic": "t", "codec": "zstd",
//	 "records": [{"p": 0, "k": "a2V5", "v": null, "h": [{"k": "h", "v": "AQI="}], "ts": 1700000000000}]}
//	  -> {"offsets": [[0, 0], ...]}            partition and offset of each record, in input order
//	{"op": "consume", "bootstrap": ..., "topic": "t", "partitions": [0, 1], "count": 100,
//	 "timeout_ms": 30000}
//	  -> {"records": [{"p", "o", "k", "v", "h", "ts", "tt"}]}   direct assignment from offset 0
//	     (or "start": {"1": 17}), no consumer group; tt is the timestamp type (0 CreateTime,
//	     1 LogAppendTime); "max_partition_bytes" makes the fetches small
//	{"op": "group_consume", ..., "group": "g", "count": 100}
//	  -> {"records": [...]}   group member (subscribe to topic), from the start, commits the
//	     consumed offsets synchronously, leaves the group
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

type header struct {
	K string `json:"k"`
	V []byte `json:"v"`
}

type record struct {
	P  int32    `json:"p"`
	O  int64    `json:"o"`
	K  []byte   `json:"k"`
	V  []byte   `json:"v"`
	H  []header `json:"h"`
	TS int64    `json:"ts"`
	TT int8     `json:"tt"`
}

type request struct {
	Op         string           `json:"op"`
	Bootstrap  string           `json:"bootstrap"`
	Topic      string           `json:"topic"`
	Codec      string           `json:"codec"`
	Acks       *int             `json:"acks"`
	Records    []record         `json:"records"`
	Partitions []int32          `json:"partitions"`
	Start      map[string]int64 `json:"start"`               // partition -> first offset (default 0)
	MaxBytes   int32            `json:"max_partition_bytes"` // per-partition fetch size (0: default)
	Count      int              `json:"count"`
	TimeoutMs  int              `json:"timeout_ms"`
	Group      string           `json:"group"`
}

func codec(name string) (kgo.CompressionCodec, error) {
	switch name {
	case "", "none":
		return kgo.NoCompression(), nil
	case "gzip":
		return kgo.GzipCompression(), nil
	case "snappy":
		return kgo.SnappyCompression(), nil
	case "lz4":
		return kgo.Lz4Compression(), nil
	case "zstd":
		return kgo.ZstdCompression(), nil
	}
	return kgo.NoCompression(), fmt.Errorf("unknown codec %q", name)
}

func baseOpts(req *request) []kgo.Opt {
	return []kgo.Opt{
		kgo.SeedBrokers(req.Bootstrap),
		kgo.ClientID("spate-franz-go"),
		kgo.RequestTimeoutOverhead(10 * time.Second),
		kgo.RetryTimeout(20 * time.Second),
	}
}

func produce(ctx context.Context, req *request) (any, error) {
	c, err := codec(req.Codec)
	if err != nil {
		return nil, err
	}
	opts := append(baseOpts(req),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerBatchCompression(c),
		kgo.ProducerLinger(20*time.Millisecond),
	)
	if req.Acks != nil {
		switch *req.Acks {
		case -1:
			opts = append(opts, kgo.RequiredAcks(kgo.AllISRAcks()))
		case 1:
			opts = append(opts, kgo.RequiredAcks(kgo.LeaderAck()), kgo.DisableIdempotentWrite())
		case 0:
			opts = append(opts, kgo.RequiredAcks(kgo.NoAck()), kgo.DisableIdempotentWrite())
		}
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	recs := make([]*kgo.Record, len(req.Records))
	for i, r := range req.Records {
		kr := &kgo.Record{Topic: req.Topic, Partition: r.P, Key: r.K, Value: r.V,
			Timestamp: time.UnixMilli(r.TS)}
		for _, h := range r.H {
			kr.Headers = append(kr.Headers, kgo.RecordHeader{Key: h.K, Value: h.V})
		}
		recs[i] = kr
	}
	res := cl.ProduceSync(ctx, recs...)
	if err := res.FirstErr(); err != nil {
		return nil, fmt.Errorf("produce: %w", err)
	}
	// res is in completion order; the records themselves carry their partition and offset.
	offsets := make([][2]int64, len(recs))
	for i, kr := range recs {
		offsets[i] = [2]int64{int64(kr.Partition), kr.Offset}
	}
	return map[string]any{"offsets": offsets}, nil
}

func toRecord(r *kgo.Record) record {
	out := record{P: r.Partition, O: r.Offset, K: r.Key, V: r.Value, H: []header{},
		TS: r.Timestamp.UnixMilli(), TT: r.Attrs.TimestampType()}
	for _, h := range r.Headers {
		out.H = append(out.H, header{K: h.Key, V: h.Value})
	}
	return out
}

// poll until count records arrived, then a little longer to catch extras / duplicates.
func poll(ctx context.Context, cl *kgo.Client, count int) ([]record, error) {
	got := []record{}
	var extraUntil time.Time
	for {
		pctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		fs := cl.PollFetches(pctx)
		cancel()
		var errs []error
		fs.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				errs = append(errs, fmt.Errorf("%s[%d]: %w", t, p, err))
			}
		})
		if len(errs) > 0 {
			return got, fmt.Errorf("fetch errors: %v", errs)
		}
		fs.EachRecord(func(r *kgo.Record) { got = append(got, toRecord(r)) })
		if len(got) >= count && extraUntil.IsZero() {
			extraUntil = time.Now().Add(500 * time.Millisecond)
		}
		if !extraUntil.IsZero() && time.Now().After(extraUntil) {
			return got, nil
		}
		if ctx.Err() != nil {
			return got, fmt.Errorf("consumed %d of %d records before the timeout", len(got), count)
		}
	}
}

func consume(ctx context.Context, req *request) (any, error) {
	parts := map[int32]kgo.Offset{}
	for _, p := range req.Partitions {
		parts[p] = kgo.NewOffset().At(req.Start[fmt.Sprint(p)])
	}
	opts := append(baseOpts(req),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{req.Topic: parts}),
		kgo.FetchMaxWait(500*time.Millisecond),
	)
	if req.MaxBytes > 0 {
		opts = append(opts, kgo.FetchMaxPartitionBytes(req.MaxBytes), kgo.FetchMaxBytes(4*req.MaxBytes))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	got, err := poll(ctx, cl, req.Count)
	if err != nil {
		return nil, err
	}
	return map[string]any{"records": got}, nil
}

func groupConsume(ctx context.Context, req *request) (any, error) {
	opts := append(baseOpts(req),
		kgo.ConsumerGroup(req.Group),
		kgo.ConsumeTopics(req.Topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.DisableAutoCommit(),
		kgo.FetchMaxWait(500*time.Millisecond),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, err
	}
	defer cl.Close() // leaves the group
	got, err := poll(ctx, cl, req.Count)
	if err != nil {
		return nil, err
	}
	if err := cl.CommitUncommittedOffsets(ctx); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	return map[string]any{"records": got}, nil
}

func main() {
	var req request
	dec := json.NewDecoder(os.Stdin)
	if err := dec.Decode(&req); err != nil {
		fail(fmt.Errorf("bad request: %w", err))
	}
	if req.TimeoutMs == 0 {
		req.TimeoutMs = 30000
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(req.TimeoutMs)*time.Millisecond)
	defer cancel()
	var out any
	var err error
	switch req.Op {
	case "produce":
		out, err = produce(ctx, &req)
	case "consume":
		out, err = consume(ctx, &req)
	case "group_consume":
		out, err = groupConsume(ctx, &req)
	default:
		err = fmt.Errorf("unknown op %q", req.Op)
	}
	if err != nil {
		fail(err)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail(err)
	}
}

func fail(err error) {
	_ = json.NewEncoder(os.Stdout).Encode(map[string]string{"error": err.Error()})
	os.Exit(1)
}
