# Runs every configuration of the budget search in parallel on one GPU (repository root; the
# Fashion-MNIST idx .gz files in .gpu/). Then: python3 benchmarks/budget_search/fid_gpu.py
set -u
mkdir -p /root/ds/fashion-mnist && cp .gpu/*.gz /root/ds/fashion-mnist/
export LATENTFORGE_DATA=/root/ds LATENTFORGE_CACHE=/root/cache PYTHONUNBUFFERED=1 MAXT=${MAXT:-420}
nvidia-smi -L; python3 -c "import torch, sklearn; print(torch.__version__, torch.cuda.is_available())"
python3 -c "import sys; sys.path.insert(0,'src'); from latentforge.data import load_images; print(load_images('fashion-mnist:train', res=28).images.shape)"
E='"emas":[0.999,0.9995,0.9999]'
declare -A C
C[g_base]='{"model":"dcgan","steps":10000,"width":64,'$E'}'
C[g_base_decay]='{"model":"dcgan","steps":10000,"width":64,"lr_decay":true,'$E'}'
C[g_hsn]='{"model":"dcgan","steps":10000,"width":64,"loss":"hinge","spectral_norm":true,"beta1":0.0,"beta2":0.9,'$E'}'
C[g_hsn_decay]='{"model":"dcgan","steps":10000,"width":64,"loss":"hinge","spectral_norm":true,"beta1":0.0,"beta2":0.9,"lr_decay":true,'$E'}'
C[g_hsn_ttur]='{"model":"dcgan","steps":10000,"width":64,"loss":"hinge","spectral_norm":true,"beta1":0.0,"beta2":0.9,"lr":1e-4,"lr_d":4e-4,'$E'}'
C[g_nssn]='{"model":"dcgan","steps":10000,"width":64,"spectral_norm":true,'$E'}'
C[g_hsn_b5]='{"model":"dcgan","steps":10000,"width":64,"loss":"hinge","spectral_norm":true,'$E'}'
C[v_w32]='{"model":"vae","steps":30000,"width":32,"gmm_k":[10,50]}'
C[v_w32z16]='{"model":"vae","steps":30000,"width":32,"z_dim":16,"gmm_k":[10,50]}'
C[v_mse]='{"model":"vae","steps":30000,"width":32,"recon_loss":"mse","gaussian_sigma":0.1,"gmm_k":[10,50]}'
C[v_w64]='{"model":"vae","steps":15000,"width":64,"gmm_k":[10,50]}'
for k in "${!C[@]}"; do python3 benchmarks/budget_search/search.py "$k" "${C[$k]}" > /root/log_$k 2>&1 & done
wait
tail -n 4 /root/log_*
mkdir -p $OUT && (cd /root/gen && tar cf $OUT/grids.tar *.png) && cat /root/log_* > $OUT/logs.txt
ls /root/gen | wc -l
