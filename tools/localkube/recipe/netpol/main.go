// Command netpol runs kube-router's NetworkPolicy controller alone: no BGP
// routing, no service proxy (kube-proxy does that), no health or metrics
// listener. It enforces NetworkPolicy with iptables and ipset, which this
// kernel has (nftables' queue statement, which kube-network-policies needs,
// it has not).
//
// It takes kube-router's own flags (--kubeconfig, --hostname-override,
// --service-cluster-ip-range, --iptables-sync-period, ...), so that its
// documentation applies. localkube's down removes its chains and ipsets.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/cloudnativelabs/kube-router/v2/pkg/controllers/netpol"
	"github.com/cloudnativelabs/kube-router/v2/pkg/healthcheck"
	"github.com/cloudnativelabs/kube-router/v2/pkg/options"
	"github.com/spf13/pflag"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "netpol: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	klog.InitFlags(nil)
	config := options.NewKubeRouterConfig()
	config.AddFlags(pflag.CommandLine)
	pflag.Parse()
	if err := flag.Set("v", config.VLevel); err != nil {
		return err
	}
	if !config.RunFirewall || config.RunRouter || config.RunServiceProxy || config.RunLoadBalancer {
		return fmt.Errorf("only the firewall runs here: pass --run-firewall=true --run-router=false " +
			"--run-service-proxy=false --run-loadbalancer=false")
	}
	if config.Kubeconfig == "" || config.HostnameOverride == "" {
		return fmt.Errorf("--kubeconfig and --hostname-override are required")
	}
	restConfig, err := clientcmd.BuildConfigFromFlags("", config.Kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig %s: %w", config.Kubeconfig, err)
	}
	restConfig.UserAgent = "localkube-netpol (kube-router netpol)"
	client, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return err
	}

	stopCh := make(chan struct{})
	var wg sync.WaitGroup
	var ipsetMutex sync.Mutex
	healthChan := make(chan *healthcheck.ControllerHeartbeat, 10)

	factory := informers.NewSharedInformerFactory(client, 0)
	podInformer := factory.Core().V1().Pods().Informer()
	nsInformer := factory.Core().V1().Namespaces().Informer()
	npInformer := factory.Networking().V1().NetworkPolicies().Informer()
	factory.Start(stopCh)
	synced := make(chan struct{})
	go func() { factory.WaitForCacheSync(stopCh); close(synced) }()
	select {
	case <-synced:
	case <-time.After(config.CacheSyncTimeout):
		return fmt.Errorf("informer caches not synced within %s", config.CacheSyncTimeout)
	}

	// The health controller only consumes the heartbeats here (HealthPort 0: no listener).
	config.HealthPort = 0
	hc, err := healthcheck.NewHealthController(config)
	if err != nil {
		return err
	}
	hc.SetAlive()
	wg.Add(1)
	go hc.RunCheck(healthChan, stopCh, &wg)

	iptablesHandlers, ipsetHandlers, err := netpol.NewIPTablesHandlers(config)
	if err != nil {
		return err
	}
	npc, err := netpol.NewNetworkPolicyController(client, config, podInformer, npInformer, nsInformer,
		&ipsetMutex, iptablesHandlers, ipsetHandlers)
	if err != nil {
		return err
	}
	for _, add := range []func() error{
		func() error { _, err := podInformer.AddEventHandler(npc.PodEventHandler); return err },
		func() error { _, err := nsInformer.AddEventHandler(npc.NamespaceEventHandler); return err },
		func() error { _, err := npInformer.AddEventHandler(npc.NetworkPolicyEventHandler); return err },
	} {
		if err := add(); err != nil {
			return err
		}
	}
	wg.Add(1)
	go npc.Run(healthChan, stopCh, &wg)

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	<-signals
	klog.Info("stopping the network policy controller")
	close(stopCh)
	wg.Wait()
	return nil
}
