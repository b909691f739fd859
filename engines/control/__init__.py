"""Control (seed Examples 6-8, 12): a plant driven by a decision rule s_t = f({x_tau}_{tau<=t}).

lqg.py (the linear Gaussian plant, LQR by the DARE, the steady-state Kalman filter, the
LQG cost in closed form), mpc.py (receding horizon with box constraints, seed eq. (10)),
closed_loop.py (the Monte Carlo closed-loop simulator with a switchable estimator),
kalmannet_cv.py (KalmanNet with the known input B s_{t-1} in its prediction) and
tuning.py (covariances tuned by gradient descent on the closed-loop cost through a
differentiable rollout).
"""
