"""Forward time of the fast path vs the T x T closed-form RFA, forward+grad / forward,
and the time exponent over T = 256..4096 (batch 1, m = 256, D = Dv = 32). Medians of 5 runs
after compile. Absolute times on a shared machine are noise; the ratios are measured in one process."""
import jax, jax.numpy as jnp, numpy as np, time
import astrojax as aj
def timeit(f,*a,rep=5):
    jax.block_until_ready(f(*a)); ts=[]
    for _ in range(rep):
        t=time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter()-t)
    return np.median(ts)
D=Dv=32; m=256
for kind in ["causal","bidirectional"]:
    res=[]
    for T in [256,1024,4096]:
        ks=jax.random.split(jax.random.PRNGKey(0),4)
        q,k,v=(jax.random.normal(kk,(T,D)) for kk in ks[:3]); W=jax.random.normal(ks[3],(m,D))
        fwd=jax.jit(lambda q,k,v,W: aj.simulate_attention(q,k,v,W,protocol=kind)[0])
        cf=jax.jit(lambda q,k,v,W: aj.random_feature_attention(q,k,v,W,causal=kind=="causal")[0])
        g=jax.jit(jax.grad(lambda q,k,v,W: jnp.sum(aj.simulate_attention(q,k,v,W,protocol=kind)[0]**2),argnums=(0,1,2,3)))
        tf,tc,tg=timeit(fwd,q,k,v,W),timeit(cf,q,k,v,W),timeit(g,q,k,v,W)
        res.append((T,tf))
        print(kind,T,f"fwd {tf*1e3:.1f}ms closedTxT {tc*1e3:.1f}ms ratio {tf/tc:.2f} grad/fwd {tg/tf:.2f}",flush=True)
    Ts,tfs=zip(*res); print(kind,"exponent",np.polyfit(np.log(Ts),np.log(tfs),1)[0])
