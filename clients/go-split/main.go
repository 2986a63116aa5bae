// Split's Go SDK (github.com/splitio/go-client), unchanged, pointed at a Split SDK API
// (Fader's, or any other) by its Advanced URL settings: the settings README "Move from
// Split" lists. Driven over stdin/stdout, one JSON object per line, by
// tests/clients/test_split_go.py, with the same protocol as clients/split-node/driver.mjs:
//
//	{"op": "eval", "flags": [...], "lookups": [{"key", "bucketingKey", "attributes"}]}
//	    -> {"results": [[[treatment, config], ...per flag], ...per lookup]}
//	{"op": "track", "key", "trafficType", "eventType", "value", "properties"} -> {"ok": bool}
//	{"op": "destroy"} -> {"destroyed": true} (impressions and events flushed), then exit
//
// Environment: SPLIT_URL (the API base, ending in /api), SPLIT_REFRESH (seconds; the SDK
// polls flags every 5 s at the least and segments every 30 s), SPLIT_IMPRESSIONS_MODE.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/splitio/go-client/v6/splitio/client"
	"github.com/splitio/go-client/v6/splitio/conf"
	"github.com/splitio/go-toolkit/v5/logging"
)

type lookup struct {
	Key          string         `json:"key"`
	BucketingKey *string        `json:"bucketingKey"`
	Attributes   map[string]any `json:"attributes"`
}

type request struct {
	Op          string         `json:"op"`
	Flags       []string       `json:"flags"`
	Lookups     []lookup       `json:"lookups"`
	Key         string         `json:"key"`
	TrafficType string         `json:"trafficType"`
	EventType   string         `json:"eventType"`
	Value       any            `json:"value"`
	Properties  map[string]any `json:"properties"`
}

// native turns json.Number into int64 when it is a whole number written without a point,
// else float64: the Go SDK's numeric matchers take integers, as Fader's and Python's do.
func native(value any) any {
	switch v := value.(type) {
	case json.Number:
		if !strings.ContainsAny(v.String(), ".eE") {
			if i, err := v.Int64(); err == nil {
				return i
			}
		}
		f, _ := v.Float64()
		return f
	case []any:
		out := make([]any, len(v))
		for i, item := range v {
			out[i] = native(item)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, item := range v {
			out[k] = native(item)
		}
		return out
	}
	return value
}

func main() {
	refresh, _ := strconv.Atoi(os.Getenv("SPLIT_REFRESH"))
	cfg := conf.Default()
	base := os.Getenv("SPLIT_URL")
	cfg.Advanced.SdkURL = base
	cfg.Advanced.EventsURL = base
	cfg.Advanced.AuthServiceURL = strings.TrimSuffix(base, "/api")
	cfg.Advanced.TelemetryServiceURL = base + "/v1"
	cfg.Advanced.StreamingEnabled = false
	cfg.TaskPeriods.SplitSync = max(refresh, 5)
	cfg.TaskPeriods.SegmentSync = max(refresh, 30)
	cfg.TaskPeriods.EventsSync = max(refresh, 1)
	if mode := os.Getenv("SPLIT_IMPRESSIONS_MODE"); mode != "" {
		cfg.ImpressionsMode = strings.ToLower(mode)
	}
	if cfg.ImpressionsMode == "debug" { // other modes post at least every 60 s
		cfg.TaskPeriods.ImpressionSync = max(refresh, 1)
	}
	cfg.Logger = logging.NewLogger(&logging.LoggerOptions{LogLevel: logging.LevelNone})
	key := os.Getenv("SPLIT_SDK_KEY")
	if key == "" {
		key = "fader-sdk-key"
	}
	factory, err := client.NewSplitFactory(key, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sdk := factory.Client()
	if err := sdk.BlockUntilReady(30); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out := json.NewEncoder(os.Stdout)
	out.Encode(map[string]bool{"ready": true})
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<30)
	for in.Scan() {
		var req request
		decoder := json.NewDecoder(strings.NewReader(in.Text()))
		decoder.UseNumber()
		if err := decoder.Decode(&req); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		switch req.Op {
		case "eval":
			results := make([][][2]*string, len(req.Lookups))
			for i, lk := range req.Lookups {
				var who any = lk.Key
				if lk.BucketingKey != nil {
					who = client.NewKey(lk.Key, *lk.BucketingKey)
				}
				attributes, _ := native(lk.Attributes).(map[string]any)
				got := sdk.TreatmentsWithConfig(who, req.Flags, attributes)
				row := make([][2]*string, len(req.Flags))
				for j, flag := range req.Flags {
					treatment := got[flag].Treatment
					row[j] = [2]*string{&treatment, got[flag].Config}
				}
				results[i] = row
			}
			out.Encode(map[string]any{"results": results})
		case "track":
			properties, _ := native(req.Properties).(map[string]any)
			err := sdk.Track(req.Key, req.TrafficType, req.EventType, native(req.Value), properties)
			out.Encode(map[string]bool{"ok": err == nil})
		case "destroy":
			sdk.Destroy()
			out.Encode(map[string]bool{"destroyed": true})
			return
		}
	}
}
