// Command check reads Fader flags from Go through the stock OpenFeature providers, with no Fader
// SDK, and checks every answer it is given.
//
//	go run . rpc         flagd provider, remote evaluation over Connect (HTTP/1.1): FLAGD_HOST /
//	                     FLAGD_PORT (Fader's --ofrep-listen, which also serves flagd's API over
//	                     Connect; default localhost:8016)
//	go run . in-process  flagd provider, local evaluation of the flags Fader syncs: FLAGD_HOST /
//	                     FLAGD_PORT (Fader's --sync-listen, default localhost:8015)
//	go run . ofrep       OFREP provider: OFREP_ENDPOINT (Fader's --ofrep-listen, default
//	                     http://localhost:8016), OFREP_BEARER_TOKEN (optional)
//
// Input on stdin, one JSON object a line (the same protocol as clients/node/check.mjs):
//
//	{"type": "boolean|string|integer|float|object", "flag": "...", "default": ..., "context": {...},
//	 "expect": {"value": ..., "variant": ..., "reason": ..., "errorCode": ...}}
//	{"wait": "change"}   wait for the provider's configuration-changed event, then go on
//
// Each check prints "ok" or "FAIL" with the answer; the last line is "all N answers right", or
// "M of N answers wrong" and the exit status is 1.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"time"

	flagd "github.com/open-feature/go-sdk-contrib/providers/flagd/pkg"
	"github.com/open-feature/go-sdk-contrib/providers/ofrep"
	"github.com/open-feature/go-sdk/openfeature"
)

type request struct {
	Wait    string         `json:"wait"`
	Type    string         `json:"type"`
	Flag    string         `json:"flag"`
	Default any            `json:"default"`
	Context map[string]any `json:"context"`
	Expect  map[string]any `json:"expect"`
}

func env(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}

func provider(mode string) (openfeature.FeatureProvider, error) {
	switch mode {
	case "ofrep":
		var options []ofrep.Option
		if token := os.Getenv("OFREP_BEARER_TOKEN"); token != "" {
			options = append(options, ofrep.WithBearerToken(token))
		}
		return ofrep.NewProvider(env("OFREP_ENDPOINT", "http://localhost:8016"), options...), nil
	case "rpc", "in-process":
		options := []flagd.ProviderOption{flagd.WithDeadline(5000)}
		defaultPort := "8016" // Connect is served on Fader's OFREP port
		if mode == "in-process" {
			options = append(options, flagd.WithInProcessResolver())
			defaultPort = "8015"
		} else {
			options = append(options, flagd.WithRPCResolver())
		}
		if socket := os.Getenv("FLAGD_SOCKET_PATH"); socket != "" {
			options = append(options, flagd.WithSocketPath(socket))
		} else {
			port, err := strconv.ParseUint(env("FLAGD_PORT", defaultPort), 10, 16)
			if err != nil {
				return nil, fmt.Errorf("FLAGD_PORT: %w", err)
			}
			options = append(options, flagd.WithHost(env("FLAGD_HOST", "localhost")), flagd.WithPort(uint16(port)))
		}
		return flagd.NewProvider(options...)
	}
	return nil, fmt.Errorf("unknown mode %q: rpc, in-process or ofrep", mode)
}

// answer evaluates one check and returns the fields a check can expect.
func answer(client *openfeature.Client, r request) map[string]any {
	ctx := context.Background()
	attributes := map[string]any{}
	key := ""
	for name, value := range r.Context {
		if name == "targetingKey" {
			key, _ = value.(string)
			continue
		}
		attributes[name] = value
	}
	evalCtx := openfeature.NewEvaluationContext(key, attributes)
	var value any
	var details openfeature.EvaluationDetails
	switch r.Type {
	case "boolean":
		fallback, _ := r.Default.(bool)
		d, _ := client.BooleanValueDetails(ctx, r.Flag, fallback, evalCtx)
		value, details = d.Value, d.EvaluationDetails
	case "string":
		fallback, _ := r.Default.(string)
		d, _ := client.StringValueDetails(ctx, r.Flag, fallback, evalCtx)
		value, details = d.Value, d.EvaluationDetails
	case "integer":
		fallback, _ := r.Default.(float64)
		d, _ := client.IntValueDetails(ctx, r.Flag, int64(fallback), evalCtx)
		value, details = d.Value, d.EvaluationDetails
	case "float":
		fallback, _ := r.Default.(float64)
		d, _ := client.FloatValueDetails(ctx, r.Flag, fallback, evalCtx)
		value, details = d.Value, d.EvaluationDetails
	default:
		d, _ := client.ObjectValueDetails(ctx, r.Flag, r.Default, evalCtx)
		value, details = d.Value, d.EvaluationDetails
	}
	return map[string]any{
		"value":     value,
		"variant":   orNil(details.Variant),
		"reason":    orNil(string(details.Reason)),
		"errorCode": orNil(string(details.ErrorCode)),
	}
}

func orNil(text string) any {
	if text == "" {
		return nil
	}
	return text
}

// normalized is a value as JSON has it (numbers as float64), so answers compare with the check.
func normalized(value any) any {
	data, err := json.Marshal(value)
	if err != nil {
		return fmt.Sprintf("unencodable %v", value)
	}
	var out any
	_ = json.Unmarshal(data, &out)
	return out
}

func main() {
	mode := "rpc"
	if len(os.Args) > 1 {
		mode = os.Args[1]
	}
	chosen, err := provider(mode)
	if err != nil {
		fmt.Println("cannot configure the provider:", err)
		os.Exit(2)
	}
	changes := make(chan struct{}, 64)
	onChange := func(openfeature.EventDetails) {
		select {
		case changes <- struct{}{}:
		default: // a burst of events while nobody waits: one is enough
		}
	}
	if err := openfeature.SetProviderAndWait(chosen); err != nil {
		fmt.Println("the provider did not become ready:", err)
		os.Exit(2)
	}
	// registered once ready: the initial sync is not a change the caller waits for
	openfeature.AddHandler(openfeature.ProviderConfigChange, &onChange)
	client := openfeature.NewClient("fader-check")

	checks, failures := 0, 0
	scanner := bufio.NewScanner(os.Stdin)
	scanner.Buffer(make([]byte, 1<<20), 1<<24)
	for scanner.Scan() {
		if len(scanner.Bytes()) == 0 {
			continue
		}
		var r request
		if err := json.Unmarshal(scanner.Bytes(), &r); err != nil {
			fmt.Println("FAIL unreadable check:", err)
			failures++
			continue
		}
		if r.Wait == "change" {
			for len(changes) > 0 {
				<-changes
			}
			fmt.Println("waiting for a change")
			select {
			case <-changes:
				fmt.Println("changed")
			case <-time.After(60 * time.Second):
				fmt.Println("FAIL no change in 60 s")
				failures++
			}
			continue
		}
		checks++
		got := answer(client, r)
		shown := map[string]any{}
		ok := true
		for field, want := range r.Expect {
			shown[field] = normalized(got[field])
			if !reflect.DeepEqual(shown[field], normalized(want)) {
				ok = false
			}
		}
		line, _ := json.Marshal(shown)
		if ok {
			fmt.Printf("ok   %s %s %s %s\n", mode, r.Type, r.Flag, line)
		} else {
			failures++
			want, _ := json.Marshal(r.Expect)
			fmt.Printf("FAIL %s %s %s %s\n     expected %s\n", mode, r.Type, r.Flag, line, want)
		}
	}
	openfeature.Shutdown()
	if failures > 0 {
		fmt.Printf("%d of %d answers wrong\n", failures, checks)
		os.Exit(1)
	}
	fmt.Printf("all %d answers right\n", checks)
}
