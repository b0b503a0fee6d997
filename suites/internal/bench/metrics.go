package bench

import (
	"bytes"
	"context"
	"fmt"
	"math"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"k8s.io/client-go/kubernetes"
)

// Histogram is a Prometheus histogram summed over scrapes: cumulative counts
// per upper bound.
type Histogram struct {
	Bounds []float64
	Counts []float64 // cumulative, per bound; the last bound is +Inf
	Count  float64
	Sum    float64
}

// Sub is h minus an earlier scrape of the same histogram: what happened between.
func (h Histogram) Sub(before Histogram) Histogram {
	out := Histogram{Bounds: h.Bounds, Counts: make([]float64, len(h.Counts)), Count: h.Count - before.Count, Sum: h.Sum - before.Sum}
	for i := range h.Counts {
		out.Counts[i] = h.Counts[i]
		if i < len(before.Counts) {
			out.Counts[i] -= before.Counts[i]
		}
	}
	return out
}

// Mean is Sum/Count: exact, where a quantile is only as fine as the buckets.
func (h Histogram) Mean() float64 {
	if h.Count == 0 {
		return math.NaN()
	}
	return h.Sum / h.Count
}

// Quantile interpolates linearly within the bucket the q-th observation falls
// in, as PromQL's histogram_quantile does.
func (h Histogram) Quantile(q float64) float64 {
	if h.Count == 0 || len(h.Bounds) == 0 {
		return math.NaN()
	}
	rank := q * h.Count
	prevBound, prevCount := 0.0, 0.0
	for i, b := range h.Bounds {
		if h.Counts[i] >= rank {
			if math.IsInf(b, 1) {
				return prevBound
			}
			if h.Counts[i] == prevCount {
				return b
			}
			return prevBound + (b-prevBound)*(rank-prevCount)/(h.Counts[i]-prevCount)
		}
		prevBound, prevCount = b, h.Counts[i]
	}
	return prevBound
}

// add sums m's histogram into h (same bucket layout).
func (h *Histogram) add(m *dto.Histogram) {
	bs := m.GetBucket()
	if len(h.Bounds) == 0 {
		for _, b := range bs {
			h.Bounds = append(h.Bounds, b.GetUpperBound())
		}
		h.Bounds = append(h.Bounds, math.Inf(1))
		h.Counts = make([]float64, len(h.Bounds))
	}
	for i, b := range bs {
		if i < len(h.Counts)-1 {
			h.Counts[i] += float64(b.GetCumulativeCount())
		}
	}
	h.Counts[len(h.Counts)-1] += float64(m.GetSampleCount())
	h.Count += float64(m.GetSampleCount())
	h.Sum += m.GetSampleSum()
}

// Scrape is the metric families of some /metrics pages, merged.
type Scrape map[string]*dto.MetricFamily

// Histogram sums family name's histograms whose labels include match.
func (s Scrape) Histogram(name string, match map[string]string) Histogram {
	var h Histogram
	mf := s[name]
	if mf == nil {
		return h
	}
	for _, m := range mf.GetMetric() {
		if m.GetHistogram() != nil && labelsMatch(m, match) {
			h.add(m.GetHistogram())
		}
	}
	return h
}

// Gauge sums family name's gauges whose labels include match (0: no such family).
func (s Scrape) Gauge(name string, match map[string]string) float64 {
	var v float64
	mf := s[name]
	if mf == nil {
		return 0
	}
	for _, m := range mf.GetMetric() {
		if m.GetGauge() != nil && labelsMatch(m, match) {
			v += m.GetGauge().GetValue()
		}
	}
	return v
}

func labelsMatch(m *dto.Metric, match map[string]string) bool {
	got := map[string]string{}
	for _, l := range m.GetLabel() {
		got[l.GetName()] = l.GetValue()
	}
	for k, v := range match {
		if got[k] != v {
			return false
		}
	}
	return true
}

func (s Scrape) merge(page []byte, what string) error {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(page))
	if err != nil {
		return fmt.Errorf("parsing the metrics of %s: %w", what, err)
	}
	for name, mf := range fams {
		if have := s[name]; have != nil {
			have.Metric = append(have.Metric, mf.Metric...)
		} else {
			s[name] = mf
		}
	}
	return nil
}

// ScrapeKubelets reads every node's kubelet /metrics through the API server's
// node proxy.
func ScrapeKubelets(ctx context.Context, cs kubernetes.Interface, nodes []string) (Scrape, error) {
	s := Scrape{}
	for _, n := range nodes {
		page, err := cs.CoreV1().RESTClient().Get().AbsPath("/api/v1/nodes", n, "proxy", "metrics").DoRaw(ctx)
		if err != nil {
			return nil, fmt.Errorf("reading the kubelet metrics of node %s (API server node proxy): %w", n, err)
		}
		if err := s.merge(page, "the kubelet of "+n); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// ScrapePods reads /metrics on port of the pods of namespace matching
// selector, through the API server's pod proxy.
func ScrapePods(ctx context.Context, cs kubernetes.Interface, namespace, selector, port string) (Scrape, error) {
	pods, err := listPods(ctx, cs, namespace, selector)
	if err != nil {
		return nil, err
	}
	s := Scrape{}
	for _, p := range pods {
		page, err := cs.CoreV1().Pods(namespace).ProxyGet("http", p, port, "metrics", nil).DoRaw(ctx)
		if err != nil {
			return nil, fmt.Errorf("reading the metrics of pod %s/%s port %s: %w", namespace, p, port, err)
		}
		if err := s.merge(page, namespace+"/"+p); err != nil {
			return nil, err
		}
	}
	if len(pods) == 0 {
		return nil, fmt.Errorf("no pods %s in namespace %s to read metrics from", selector, namespace)
	}
	return s, nil
}
