// Added to kwok's pkg/kwok/controllers at build time by e2e/cluster/build-binaries (a Go
// build -overlay; kwok's own files are not copied here). benchkite's code, not kwok's.
//
// kwok finishes a pod's graceful deletion like a kubelet does, with a delete of grace 0,
// but by name only. A job queued for an old pod then deletes its successor of the same
// name (benchkite names agent pods by slot): during a fleet roll at 155 nodes, 193 new
// agent pods were deleted by kwok while the controller was stopped (found with
// e2e/cluster/who-deleted). The kubelet deletes with the pod's UID as a precondition for
// exactly this reason (kubernetes/kubernetes#25224); so does this.

package controllers

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
)

// benchkiteDeletePod deletes exactly this pod (grace 0, UID precondition). A pod that is
// already gone, or was replaced by another of the same name, counts as deleted.
func benchkiteDeletePod(ctx context.Context, pods typedcorev1.PodInterface, pod *corev1.Pod) error {
	opts := *metav1.NewDeleteOptions(0)
	if pod.UID != "" {
		opts.Preconditions = metav1.NewUIDPreconditions(string(pod.UID))
	}
	err := pods.Delete(ctx, pod.Name, opts)
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	return err
}
