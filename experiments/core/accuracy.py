"""Read-out accuracy of the fast path at default parameters (tau = 0.02, N(0,1) inputs, m = 256,
T = 32, D = Dv = 32) against a tight Diffrax solve of the same ODE (rtol 1e-10, float64),
for n_sub = 4, 8, 16 in float64 and float32. Prints max-norm relative errors of y."""
import jax, jax.numpy as jnp, numpy as np, time
jax.config.update("jax_enable_x64", True)
import astrojax as aj
T,D,Dv,m=32,32,32,256
ks=jax.random.split(jax.random.PRNGKey(0),4)
q,k,v=(jax.random.normal(kk,(T,D)) for kk in ks[:3]); W=jax.random.normal(ks[3],(m,D))
for kind in ["bidirectional","causal"]:
    ref,_=aj.simulate_attention(q,k,v,W,protocol=kind,method=aj.DiffraxPath(rtol=1e-10,atol=1e-12))
    for n in [4,8,16]:
        for dt in [jnp.float64, jnp.float32]:
            y,_=aj.simulate_attention(*(x.astype(dt) for x in (q,k,v,W)),protocol=kind,method=aj.FastPath(n_sub=n))
            print(kind,n,dt.__name__, float(jnp.max(jnp.abs(y-ref))/jnp.max(jnp.abs(ref))))
